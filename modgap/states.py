"""States stage driver: run a speech LLM on each corpus item as speech (S) and as text (T), score the answer,
and dump the span hidden states of the selected layers into a resumable Zarr store (`modgap.store`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hashlib
import json

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm import tqdm

from modgap.atomic import write_csv, write_parquet
from modgap.corpus.items import Item
from modgap.models import load_adapter
from modgap.models.base import Inputs, SpeechLM
from modgap.plan import ModelRun
from modgap.store import CondBatch, StoreReader, StoreWriter, predictions_table

CONDITIONS = ("S", "T")


@dataclass(frozen=True)
class StateSpec:
    """What to dump: `layers` (None = all, 0 = input embeddings), store dtype, optional BitRound bits,
    option-score normalisation ("none" | "tokens" | "chars"), and items per store batch, which is also the items per
    forward pass of each condition (`SpeechLM.prefill_batch`)."""

    layers: tuple[int, ...] | None = None
    dtype: str = "float16"
    bitround_bits: int | None = None
    norm: str = "none"
    batch_items: int = 16


Row = tuple[Item, str, np.ndarray]  # (item, audio path, word spans [W, 2] in ms)


def corpus_items(table: pd.DataFrame) -> list[Row]:
    """Usable rows of a corpus items table: (item, audio path, word spans [W, 2] in ms)."""
    ok = table[table["status"] == "ok"]
    return [
        (
            Item(r.id, r.subject, r.question, list(r.choices), int(r.answer)),
            r.audio,
            np.stack([np.asarray(r.start_ms, float), np.asarray(r.end_ms, float)], axis=1),
        )
        for r in ok.itertuples()
    ]


def speech_inputs(adapter: SpeechLM, row: Row) -> Inputs:
    """The S prompt of a corpus row: its recording read from disk, with the word spans for position word indices."""
    item, audio, spans = row
    return adapter.speech_inputs(item, sf.read(audio, dtype="float32")[0], spans)


def shard_rows(n_items: int, shard_items: int, shard: int) -> slice:
    """Rows of shard `shard` when `n_items` are cut into shards of `shard_items`."""
    if not 0 <= shard * shard_items < max(n_items, 1):
        raise ValueError(f"shard {shard} is empty: {n_items} items in shards of {shard_items}")
    return slice(shard * shard_items, min((shard + 1) * shard_items, n_items))


def _condition_batch(runs: list[tuple[Inputs, torch.Tensor, object, Item]], layers: list[int], times) -> CondBatch:
    """Pack per-item (inputs, hidden [L+1, n, d], scores, item) into one CondBatch over the selected layers."""
    lengths = [len(inp.span) for inp, *_ in runs]
    words = [inp.words if inp.words is not None else np.full(len(inp.span), -1) for inp, *_ in runs]
    spans = [times(inp) for inp, *_ in runs]
    return CondBatch(
        hidden=torch.cat([h[layers] for _, h, *_ in runs], dim=1),
        lengths=lengths,
        seq=np.concatenate([inp.span.numpy() for inp, *_ in runs]),
        pred=np.array([s.pred for _, _, s, _ in runs]),
        correct=np.array([int(s.pred == it.answer) for _, _, s, it in runs]),
        loglik=_pad([s.logliks for _, _, s, _ in runs]),
        word=np.concatenate(words),
        start_ms=np.concatenate([t[:, 0] for t in spans]),
        end_ms=np.concatenate([t[:, 1] for t in spans]),
    )


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """[B, max k] option log-likelihoods, NaN where an item has fewer options."""
    out = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def dump_states(
    adapter: SpeechLM,
    rows: list[Row],
    style: str,
    out_path: str | Path,
    spec: StateSpec,
    model_id: str,
    config_hash: str = "",
) -> pd.DataFrame:
    """Run S and T for every row, write the store at `out_path` and return its predictions table.

    A killed run leaves `<out_path>.partial`; calling again resumes after the last committed item.
    """
    layers = list(range(adapter.n_layers + 1)) if spec.layers is None else list(spec.layers)
    if bad := [l for l in layers if not 0 <= l <= adapter.n_layers]:
        raise ValueError(f"layers {bad} out of range: {model_id} has layers 0..{adapter.n_layers}")
    writer = StoreWriter(
        out_path, model=model_id, layers=layers, d=adapter.hidden_size,
        n_options=max(len(it.choices) for it, *_ in rows), dtype=spec.dtype, bitround_bits=spec.bitround_bits,
        config_hash=config_hash, extra={"style": style, "norm": spec.norm, "family": adapter.family},
    )
    s_times = lambda inp: adapter.position_times_ms(len(inp.span))  # noqa: E731
    t_times = lambda inp: np.full((len(inp.span), 2), -1.0)  # noqa: E731
    todo = rows[writer.n_done :]
    with writer, tqdm(total=len(rows), initial=writer.n_done, desc=f"states {model_id}", mininterval=5) as bar:
        for start in range(0, len(todo), spec.batch_items):
            batch = todo[start : start + spec.batch_items]
            items = [item for item, *_ in batch]
            inputs = {
                "S": [speech_inputs(adapter, row) for row in batch],
                "T": [adapter.text_inputs(it, style) for it in items],
            }
            runs = {
                c: [(pre.inputs, pre.hidden, adapter.score_prefill(pre, it, style, spec.norm), it)
                    for pre, it in zip(adapter.prefill_batch(inputs[c], hidden=True), items)]
                for c in CONDITIONS
            }
            writer.append(
                [it.id for it in items],
                {"S": _condition_batch(runs["S"], layers, s_times), "T": _condition_batch(runs["T"], layers, t_times)},
            )
            bar.update(len(batch))
    return predictions_table(StoreReader(out_path))


def accuracy_table(predictions: pd.DataFrame, **labels: str) -> pd.DataFrame:
    """One row: `labels` (model, dataset, voice), text and speech accuracy, GAP in points, and item count."""
    acc = predictions.pivot_table(index="id", columns="condition", values="correct")
    text, speech = float(acc["T"].mean()), float(acc["S"].mean())
    return pd.DataFrame(
        [{**labels, "text_acc": text, "speech_acc": speech, "gap": round(100 * (text - speech), 2), "n_items": len(acc)}]
    )




def shard_of(items_table: str | Path, shard: int, states: dict) -> tuple[list[Row], str]:
    """The usable rows of one shard of a corpus items table, and the table's style; `states` is the config's
    `states` section (shard size, item cap)."""
    table = pd.read_parquet(items_table)
    if states["max_items"] is not None:
        table = table.iloc[: states["max_items"]]
    rows = corpus_items(table.iloc[shard_rows(len(table), states["shard_items"], shard)])
    if not rows:
        raise ValueError(f"{items_table}: shard {shard} has no usable item (all excluded by the corpus stage)")
    return rows, table["style"].iloc[0]


def load_run(run: ModelRun, device: str | None = None) -> SpeechLM:
    """The adapter of a model run, on `device` (the GPU a job claimed, `modgap.devices.job_device`) or `run.device`."""
    return load_adapter(run.family, run.path, dtype=run.dtype, device=device or run.device,
                        attn_implementation=run.attn_implementation, long_audio=run.long_audio)


def run_shard(run: ModelRun, items_table: str | Path, shard: int, states: dict, out_path: str | Path,
              device: str | None = None) -> pd.DataFrame:
    """Dump one shard of a corpus items table for one model; `states` is the config's `states` section.
    `device` overrides `run.device` and is not part of the store's config hash, so a killed dump resumes on
    another GPU."""
    rows, style = shard_of(items_table, shard, states)
    adapter = load_run(run, device)
    spec = StateSpec(
        layers=None if states["layers"] == "all" else tuple(states["layers"]), dtype=states["dtype"],
        bitround_bits=states["bitround_bits"], norm=states["norm"], batch_items=states["batch_items"],
    )
    # the items too: a killed dump resumes only onto the same rows (a rebuilt corpus starts over)
    items = [(it.id, path, spans.tolist()) for it, path, spans in rows]
    digest = hashlib.sha256(json.dumps([run.to_dict(), states, items], sort_keys=True).encode()).hexdigest()[:12]
    return dump_states(adapter, rows, style, out_path, spec, run.name, config_hash=digest)


def write_tables(stores: list[str], labels: dict, predictions_out: str | Path, accuracy_out: str | Path) -> pd.DataFrame:
    """Concatenate the shards' predictions (Parquet) and write the model's accuracy row (CSV)."""
    pred = pd.concat([predictions_table(StoreReader(s)) for s in stores], ignore_index=True)
    write_parquet(pred.drop(columns="item"), predictions_out)
    acc = accuracy_table(pred, **labels)
    write_csv(acc, accuracy_out)
    return acc
