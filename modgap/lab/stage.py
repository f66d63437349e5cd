"""Lab stage drivers: files in, files out. Phases run from saved checkpoints so each is one workflow job.

Layout: `{out}/pretrain/text`, `{out}/pretrain/audio` (whole models + processor), then per strategy
`{out}/{strategy}/step{N}/` (model + processor, `save_pretrained`) and `{out}/{strategy}/train_log.json`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from modgap.atomic import write_csv, write_parquet, write_text
from modgap.checkpoints import parse_model
from modgap.corpus.items import Item
from modgap.corpus.lab_world import generate_lab, lab_vocabulary
from modgap.lab import data, score, train
from modgap.lab.model import build_model, build_processor
from modgap.lab.fingerprint import checkpoint_name, fingerprint
from modgap.lab.recipe import Recipe
from modgap.lab.tokenizer import build_tokenizer

Model = Qwen2AudioForConditionalGeneration


def text_items(recipe: Recipe, world_seed: int) -> list[Item]:
    """The text pretraining items: `recipe.text_items` train-split items generated from the lab world."""
    return generate_lab(world_seed, recipe.text_items, 0, 0)["train"]


def load(path: str | Path) -> tuple[Model, Qwen2AudioProcessor]:
    """A saved lab model (float32, eval mode) and its processor."""
    model = Model.from_pretrained(path, dtype=torch.float32)
    return model.eval(), Qwen2AudioProcessor.from_pretrained(path)


def save(model: Model, processor: Qwen2AudioProcessor, path: str | Path, log: dict | None = None) -> None:
    """`save_pretrained` the model and processor into `path`, with an optional `train_log.json`."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if log is not None:
        write_text(json.dumps(log, indent=1) + "\n", path / "train_log.json")


def speech(processor: Qwen2AudioProcessor, tables: list[str]) -> data.SpeechSet:
    """The usable items of corpus tables (items.parquet), spoken, as one SpeechSet."""
    items, waves = [], []
    for table in tables:
        i, w = data.load_table(table)
        items += i
        waves += w
    return data.speech_set(processor, items, waves)


def run_text(recipe: Recipe, world_seed: int, out: str | Path) -> dict:
    """Phase 1: tokenizer, processor and a fresh model; the language model trained on generated text, then on a mix
    with questions spread out like audio positions (`recipe.spread_steps`)."""
    torch.set_num_threads(recipe.threads)
    items = text_items(recipe, world_seed)
    tok = build_tokenizer([f"{it.question} {' '.join(it.choices)}" for it in items], lab_vocabulary(world_seed))
    processor = build_processor(recipe, tok)
    model = build_model(recipe, tok)
    weights = train.text_weights(recipe)
    log = train.pretrain_text(model, data.text_sequences(processor, items, weights), tok.pad_token_id, recipe)
    if recipe.spread_steps:
        seqs = data.text_sequences(processor, items, weights, recipe.text_spread, recipe.seed)
        log["spread"] = train.pretrain_text(model, seqs, tok.pad_token_id, recipe, "spread")
    save(model, processor, out, {"recipe": recipe.to_dict(), "text": log})
    return log


def run_audio(recipe: Recipe, text_model: str | Path, tables: list[str], out: str | Path) -> dict:
    """Phase 2: the audio tower trained with CTC on the spoken training questions, then the projector fitted."""
    torch.set_num_threads(recipe.threads)
    model, processor = load(text_model)
    log = train.pretrain_audio(model, speech(processor, tables), processor, recipe)
    save(model, processor, out, {"recipe": recipe.to_dict(), "ctc": log})
    return log


def run_align(
    recipe: Recipe, strategy: str, audio_model: str | Path, tables: list[str], world_seed: int, out: str | Path
) -> dict:
    """Phase 3 for one strategy; writes `{out}/step{N}/` for every recipe checkpoint and `{out}/train_log.json`."""
    torch.set_num_threads(recipe.threads)
    out = Path(out)
    model, processor = load(audio_model)
    replay = data.text_sequences(
        processor, text_items(recipe, world_seed), train.text_weights(recipe), recipe.text_spread, recipe.seed
    )
    log = train.align(
        model, speech(processor, tables), replay, processor, recipe, strategy,
        save=lambda step: save(model, processor, out / f"step{step}"),
    )
    write_text(json.dumps({"recipe": recipe.to_dict(), strategy: log}, indent=1) + "\n", out / "train_log.json")
    return log


def run_score(checkpoints: dict[str, str], test_table: str, out_csv: str, out_predictions: str, out_json: str) -> list[dict]:
    """Score every checkpoint ({name: path}) on the test table: accuracy.csv, per-item predictions, distributions."""
    import pandas as pd

    rows, preds, details = [], [], {}
    items, waves = data.load_table(test_table)
    for name, path in checkpoints.items():
        model, processor = load(path)
        pred = score.predictions(model, processor, items, data.speech_set(processor, items, waves))
        s = score.summarize(pred, items)
        checkpoint = parse_model(name)
        rows.append({"checkpoint": name, "strategy": checkpoint.strategy, "step": checkpoint.step,
                     **{k: s[k] for k in ("text_acc", "speech_acc", "gap", "constant_baseline_acc", "n_items",
                                          "text_distinct", "speech_distinct", "speech_top_share")}})
        preds.append(pred.assign(checkpoint=name))
        details[name] = {"baseline": s["baseline"], "distribution": s["distribution"]}
    write_csv(pd.DataFrame(rows), out_csv)
    write_parquet(pd.concat(preds), out_predictions)
    write_text(json.dumps(details, indent=1) + "\n", out_json)
    return rows


def export(checkpoints: dict[str, str], recipe: Recipe, data_spec: dict, out: str | Path) -> None:
    """Ship checkpoints as fp16 safetensors under `{out}/{strategy}/step{N}/` plus `{out}/recipe.json`."""
    out = Path(out)
    for name, path in checkpoints.items():
        checkpoint = parse_model(name)
        model, processor = load(path)
        save(model.half(), processor, out / checkpoint.strategy / f"step{checkpoint.step}")
    meta = {"fingerprint": fingerprint(recipe, data_spec), "recipe": recipe.to_dict(), "data": data_spec,
            "checkpoints": sorted(checkpoints)}
    write_text(json.dumps(meta, indent=1) + "\n", out / "recipe.json")


def import_shipped(shipped: str | Path, strategy: str, recipe: Recipe, data_spec: dict, out: str | Path) -> list[str]:
    """Copy one strategy's shipped checkpoints into `out` as float32, after checking the recipe fingerprint."""
    shipped = Path(shipped)
    meta = json.loads((shipped / "recipe.json").read_text())
    want = fingerprint(recipe, data_spec)
    if meta["fingerprint"] != want:
        raise ValueError(
            f"shipped lab checkpoints ({shipped}) were trained with fingerprint {meta['fingerprint']}, but the "
            f"current recipe and data give {want}; set lab.source: train (and re-export), or restore the recipe"
        )
    names = []
    steps = sorted(int(p.name.removeprefix("step")) for p in (shipped / strategy).glob("step*"))
    for step in steps:
        model, processor = load(shipped / strategy / f"step{step}")
        save(model, processor, Path(out) / f"step{step}")
        names.append(checkpoint_name(strategy, step))
    if not names:
        raise ValueError(f"no shipped checkpoints for strategy {strategy!r} under {shipped}")
    return names
