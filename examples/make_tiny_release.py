"""Build a tiny stand-in for a real release, offline: a random Qwen2-Audio checkpoint and a VoiceBench-shaped mmsu.

    python examples/make_tiny_release.py OUT [--per-subject 8] [--seed 0]

writes
  OUT/qwen2-audio-tiny/  `save_pretrained` model + Qwen2AudioProcessor, as a hub checkpoint is laid out: a word-level
                         tokenizer trained here on the benchmark's words (Qwen2-Audio's special tokens), the lab chat
                         template, and the real checkpoint's audio geometry (128 mel bins, 16 kHz, 10 ms hop, 30 s
                         window = 1500 encoder positions, audio token <|AUDIO|>); random weights, a few MB, runs on CPU.
  OUT/mmsu/              a `datasets` DatasetDict (`save_to_disk`) like hlt-lab/voicebench's mmsu: one split per
                         subject, records {audio (Audio, embedded WAV bytes), prompt (question + "A. ..." options),
                         reference (letter), question_id}; each prompt spoken by espeak-ng at 16 kHz.
and prints a config that runs both through the workflow. The questions are the lab world's (modgap.corpus.lab_world).
"""
from __future__ import annotations

import argparse
import io
from collections import defaultdict
from pathlib import Path

import soundfile as sf
from datasets import Audio, Dataset, DatasetDict, Features, Value

from modgap.corpus.items import LETTERS, Item, words_of
from modgap.corpus.lab_world import generate_lab
from modgap.corpus.tts import EspeakTTS
from modgap.lab.model import build_model, build_processor
from modgap.lab.recipe import get_recipe
from modgap.lab.tokenizer import TEMPLATE_WORDS, build_tokenizer

WINDOW_S = 30  # Qwen2-Audio's encoder window: 3000 mel frames, max_source_positions 1500
MMSU_FEATURES = Features(
    {"audio": Audio(), "prompt": Value("string"), "reference": Value("string"), "question_id": Value("int64")}
)


def voicebench_prompt(item: Item) -> str:
    """The question with its options on their own lines, as VoiceBench's mmsu prompts hold them."""
    return "\n".join([item.question, *(f"{LETTERS[k]}. {c}" for k, c in enumerate(item.choices))])


def wav_bytes(text: str, tts: EspeakTTS) -> bytes:
    """`text` spoken by espeak-ng, as 16-bit WAV file bytes (what an Audio column embeds)."""
    speech = tts.synthesize(text)
    buf = io.BytesIO()
    sf.write(buf, speech.audio, speech.sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def build_mmsu(out: Path, per_subject: int, seed: int) -> dict[str, list[Item]]:
    """Save the VoiceBench-shaped mmsu DatasetDict to `out`; returns its items by subject (split)."""
    items = generate_lab(seed, n_train=0, n_calib=0, n_test=per_subject * 64)["test"]
    by_subject: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        if len(by_subject[it.subject]) < per_subject:
            by_subject[it.subject].append(it)
    tts = EspeakTTS("en-us")
    splits, qid = {}, 0
    for subject, chosen in sorted(by_subject.items()):
        rows = []
        for it in chosen:
            prompt = voicebench_prompt(it)
            rows.append({"audio": {"bytes": wav_bytes(prompt, tts), "path": f"{subject}_{qid}.wav"},
                         "prompt": prompt, "reference": LETTERS[it.answer], "question_id": qid})
            qid += 1
        splits[subject] = Dataset.from_list(rows).cast(MMSU_FEATURES)  # cast: embedding bytes needs no torchcodec
    DatasetDict(splits).save_to_disk(str(out))
    return dict(by_subject)


def build_checkpoint(out: Path, texts: list[str], seed: int) -> None:
    """Save a random tiny Qwen2-Audio with a 30 s window and its processor to `out`."""
    recipe = get_recipe("smoke", audio_window_s=WINDOW_S, seed=seed)
    words = {w.lower() for t in texts for w in words_of(t)}
    tokenizer = build_tokenizer(texts, extra_words=[*TEMPLATE_WORDS, *words, *LETTERS.lower()])
    build_model(recipe, tokenizer).save_pretrained(out)
    build_processor(recipe, tokenizer).save_pretrained(out)


def config_snippet(out: Path) -> str:
    """A whole config.yaml for a fresh folder: the tiny checkpoint on the mmsu dataset, nothing of the lab study."""
    return f"""\
# config.yaml of a fresh folder; run: snakemake -s <modgap>/Snakefile -d <folder> --cores 2
datasets:
  mmsu:
    source: voicebench
    path: {out / 'mmsu'}
    subset: mmsu          # multiple choice; every split (subject) is read, its name is its items' subject
    style: letter
models:
  qwen2-audio:
    family: qwen2_audio
    path: {out / 'qwen2-audio-tiny'}
metrics:                # the tiny checkpoint has 2 decoder layers; a 32-layer Qwen2-Audio-7B takes the defaults
  dtw: {{base_layer: 1}}
  cka: {{stability: [{{metric: l2}}, {{band: 10}}]}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-subject", type=int, default=8, help="items per subject split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out.resolve()
    by_subject = build_mmsu(out / "mmsu", args.per_subject, args.seed)
    texts = [voicebench_prompt(it) for items in by_subject.values() for it in items]
    build_checkpoint(out / "qwen2-audio-tiny", texts, args.seed)
    counts = ", ".join(f"{s} {len(v)}" for s, v in sorted(by_subject.items()))
    print(f"wrote {out / 'mmsu'} ({counts}) and {out / 'qwen2-audio-tiny'}\n\n{config_snippet(out)}")


if __name__ == "__main__":
    main()
