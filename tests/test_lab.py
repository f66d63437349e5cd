"""The lab speech LLM: tokenizer, HF round trip, hidden states, loss, scoring, determinism, and the smoke recipe."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from modgap.corpus.items import Item
from modgap.corpus.lab_world import generate_lab, lab_vocabulary
from modgap.lab import data, fingerprint, score, stage, train
from modgap.lab.model import build_model, build_processor, num_audio_positions, prompt
from modgap.lab.recipe import get_recipe
from modgap.lab.tokenizer import AUDIO, build_tokenizer

torch.set_num_threads(2)
SMOKE = get_recipe("smoke")


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised smoke-size model, its processor and a few test items with 1-2 s of noise as audio."""
    items = generate_lab(0, 50, 0, 6)
    tok = build_tokenizer([it.question for it in items["train"]], lab_vocabulary(0))
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16000 + 4000 * k).astype(np.float32) for k in range(len(items["test"]))]
    return build_model(SMOKE, tok), build_processor(SMOKE, tok), items["test"], waves


def test_tokenizer_words_and_specials():
    tok = build_tokenizer(["what is two plus three"], ["four"])
    ids = tok("<|im_start|>user\nWhat is FOUR plus zork<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<|im_start|>", "user", "what", "is", "four", "plus", "<unk>", "<|im_end|>"]
    assert tok.convert_tokens_to_ids(AUDIO) != tok.unk_token_id


def test_processor_expands_audio_to_encoder_positions(tiny):
    model, processor, items, waves = tiny
    enc = processor(text=prompt(processor), audio=waves[1], sampling_rate=16000, return_tensors="pt")
    frames = int(enc["feature_attention_mask"].sum())
    assert enc["input_features"].shape[-1] == 2 * model.config.audio_config.max_source_positions
    assert int((enc["input_ids"] == model.config.audio_token_id).sum()) == num_audio_positions(frames)


def test_from_pretrained_round_trip_and_hidden_states(tiny, tmp_path):
    model, processor, items, waves = tiny
    stage.save(model, processor, tmp_path)
    loaded = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path).eval()
    proc = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(proc, Qwen2AudioProcessor)
    texts = [prompt(proc), prompt(proc, items[0].question)]
    enc = proc(text=texts[:1], audio=waves[:1], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        a = model.eval()(**enc, output_hidden_states=True)
        b = loaded(**enc, output_hidden_states=True)
        t = loaded(**proc.tokenizer(texts[1:], return_tensors="pt"), output_hidden_states=True)
    torch.testing.assert_close(a.logits, b.logits)
    n_layers = loaded.config.text_config.num_hidden_layers
    assert len(b.hidden_states) == n_layers + 1 and len(t.hidden_states) == n_layers + 1
    assert b.hidden_states[0].shape[1] == enc["input_ids"].shape[1]


def test_weighted_nll_matches_model_loss(tiny):
    model, processor, items, _ = tiny
    batch = data.collate(data.text_sequences(processor, items[:1], data.LossWeights(answer=0, transcript=0, lm=1)), processor.tokenizer.pad_token_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    ours = train.weighted_nll(out.logits, batch["labels"], batch["weights"])
    torch.testing.assert_close(ours, out.loss)


def test_spread_questions_keep_targets_and_weights(tiny):
    _, processor, items, _ = tiny
    tok, w = processor.tokenizer, data.LossWeights(answer=1, transcript=0, lm=1)
    plain = data.text_sequences(processor, items, w)
    spread = data.text_sequences(processor, items, w, spread=1.0, seed=0)
    for it, p, s in zip(items, plain, spread):
        toks = tok.convert_ids_to_tokens(s.ids)
        inner = toks[toks.index("<|audio_bos|>") + 1 : toks.index("<|audio_eos|>")]
        assert [t for t in inner if t != tok.pad_token] == tok.convert_ids_to_tokens(data.words(processor, it.question))
        assert len(inner) > 2 * len(data.words(processor, it.question))
        assert tok.pad_token_id not in [t for t in s.labels if t != data.IGNORE]
        assert sum(s.weights) == pytest.approx(sum(p.weights))
        cue = tok.convert_tokens_to_ids("assistant")
        assert s.ids[s.ids.index(cue) :] == p.ids[p.ids.index(cue) :]  # the same answer and transcript turns
    assert data.text_sequences(processor, items, w, spread=0.5, seed=1) == data.text_sequences(processor, items, w, spread=0.5, seed=1)


def test_fit_projector_maps_audio_to_embeddings(tiny):
    model, processor, _, waves = tiny
    items = generate_lab(0, 0, 0, len(waves))["test"]
    sset = data.speech_set(processor, items, waves)
    head = torch.nn.Linear(model.config.audio_config.d_model, len(processor.tokenizer))
    before = model.model.multi_modal_projector.linear.weight.clone()
    r2 = train.fit_projector(model, head, sset)
    assert 0 < r2 <= 1 and not torch.equal(before, model.model.multi_modal_projector.linear.weight)


def test_constant_baseline_and_distribution():
    items = [Item(f"q{k}", "s", "q", ["one", "two", "three"], k % 2) for k in range(4)]
    items.append(Item("q4", "s", "q", ["one", "two", "six"], 0))
    base = score.constant_baseline(items)
    assert base["position_acc"] == pytest.approx(0.6) and base["text"] == "one" and base["acc"] == pytest.approx(0.6)
    dist = score.distribution(pd.Series(["one", "one", "two"]))
    assert dist == {"distinct": 2, "top": "one", "top_share": pytest.approx(2 / 3), "counts": {"one": 2, "two": 1}}


def test_recipe_hash_is_stable_and_sensitive():
    assert get_recipe("smoke").hash() == SMOKE.hash()
    assert get_recipe("smoke", text_lr=1e-3).hash() != SMOKE.hash()
    assert get_recipe("smoke", checkpoints=[5, 10]) == SMOKE
    with pytest.raises(ValueError):
        get_recipe("smoke", checkpoints=[4])


def test_text_phase_is_deterministic(tmp_path):
    recipe = get_recipe("smoke", text_steps=3, text_items=100)
    logs = [stage.run_text(recipe, 0, tmp_path / f"run{k}") for k in range(2)]
    assert logs[0]["losses"] == logs[1]["losses"]
    a, b = (Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / f"run{k}") for k in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _voiced_table(items: list[Item], voice: str, rate: int, folder) -> str:
    """A corpus-style items.parquet of `items` spoken by espeak."""
    from modgap.corpus.tts import EspeakTTS

    tts, rows = EspeakTTS(voice, rate, 50), []
    folder.mkdir(parents=True)
    for it in items:
        path = folder / f"{it.id}.flac"
        sf.write(path, tts.synthesize(it.question).audio, 16000)
        rows.append({"id": it.id, "subject": it.subject, "question": it.question, "choices": it.choices,
                     "answer": it.answer, "audio": str(path), "status": "ok"})
    table = folder / "items.parquet"
    pd.DataFrame(rows).to_parquet(table)
    return str(table)


@pytest.mark.timeout(120)
def test_smoke_recipe_learns(tmp_path):
    """The whole code path (text LM, CTC, both alignments, checkpoints, scoring) on the smoke recipe."""
    split = generate_lab(0, 64, 0, 100)
    train_table = _voiced_table(split["train"], "en-us", 175, tmp_path / "train")
    test_table = _voiced_table(split["test"], "en-us+f3", 185, tmp_path / "test")
    stage.run_text(SMOKE, 0, tmp_path / "text")
    ctc = stage.run_audio(SMOKE, tmp_path / "text", [train_table], tmp_path / "audio")
    assert np.isfinite(ctc["losses"]).all()
    checkpoints = {}
    for strategy in ("frozen", "full"):
        stage.run_align(SMOKE, strategy, tmp_path / "audio", [train_table], 0, tmp_path / strategy)
        checkpoints |= {fingerprint.checkpoint_name(strategy, n): str(tmp_path / strategy / f"step{n}") for n in SMOKE.checkpoints}
    rows = stage.run_score(checkpoints, test_table, tmp_path / "acc.csv", tmp_path / "pred.parquet", tmp_path / "d.json")
    acc = pd.read_csv(tmp_path / "acc.csv")
    assert list(acc["checkpoint"]) == list(checkpoints) and len(rows) == 2 * len(SMOKE.checkpoints)
    assert {"checkpoint", "strategy", "step", "text_acc", "speech_acc", "gap", "constant_baseline_acc", "n_items"} <= set(acc)
    assert (acc["n_items"] == 100).all()
    assert acc["text_acc"].min() >= 0.4, acc  # chance is 0.25


def test_export_import_round_trip_checks_fingerprint(tiny, tmp_path):
    model, processor, _, _ = tiny
    spec = {"world_seed": 0, "voices": ["en-us"]}
    stage.save(model, processor, tmp_path / "results" / "frozen" / "step4")
    checkpoints = {fingerprint.checkpoint_name("frozen", 4): str(tmp_path / "results" / "frozen" / "step4")}
    stage.export(checkpoints, SMOKE, spec, tmp_path / "shipped")
    assert fingerprint.shipped_fingerprint(tmp_path / "shipped") == fingerprint.fingerprint(SMOKE, spec)
    assert (tmp_path / "shipped" / "frozen" / "step4" / "model.safetensors").is_file()
    names = stage.import_shipped(tmp_path / "shipped", "frozen", SMOKE, spec, tmp_path / "imported")
    assert names == ["lab-frozen@step4"]
    back, _ = stage.load(tmp_path / "imported" / "step4")
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)
    with pytest.raises(ValueError, match="fingerprint"):
        stage.import_shipped(tmp_path / "shipped", "frozen", SMOKE, {**spec, "world_seed": 1}, tmp_path / "x")


def test_lab_plan_from_config():
    from modgap.config import validate_config
    from modgap.lab.workflow import lab_plan

    config = validate_config(
        {"datasets": {"lab": {"source": "lab", "style": "cloze", "splits": ["train", "test"]}},
         "tts": {"voices": {"train": ["en-us", "en-us+m3"], "test": ["en-us+f3"]}},
         "models": {"lab": {"family": "qwen2_audio", "lab": ["frozen"]}}}
    )
    config["lab"] = {"dataset": "lab", "recipe": "smoke", "overrides": {}, "source": "train", "strategies": ["frozen"]}
    plan = lab_plan(config)
    assert plan.train_tables[1] == "results/corpus/lab/train/en-us+m3/items.parquet"
    assert plan.test_table == "results/corpus/lab/test/en-us+f3/items.parquet" and not plan.shipped
    assert list(plan.checkpoints) == ["lab-frozen@step5", "lab-frozen@step10"]
    config["tts"]["voices"]["test"] = ["en-us"]
    with pytest.raises(ValueError, match="unseen"):
        lab_plan(config)
    config["models"] = {"mine": {"family": "qwen2_audio", "path": "my/checkpoint"}}
    assert lab_plan(config) is None  # no lab model: no lab rule, whatever the lab keys say
