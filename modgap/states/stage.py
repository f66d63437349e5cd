"""States stage driver: run a speech LLM on each corpus row as speech (S) and as text (T) through the forward spine
(generating an answer where the item is scored from one), score it (`modgap.states.scoring`), and write the span
hidden states of the selected layers, the scores and answers, and every enabled readout's fields into a resumable
Zarr store (`modgap.states.store`). Items the spine skips (no buildable S input) are recorded in the store's
`skipped` with their reason, and gathered per model into `skipped.csv` and the accuracy table's `n_skipped`."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from modgap.atomic import write_csv, write_parquet
from modgap.corpus.table import Row, read_shard
from modgap.models import load_run
from modgap.models.base import Inputs, SpeechLM
from modgap.options import as_dict
from modgap.plan import ModelRun
from modgap.states import readouts as readout_registry
from modgap.states import spine
from modgap.states.options import StatesOptions
from modgap.states.scoring import Outcome, outcomes
from modgap.states.store import CondBatch, StoreReader, StoreWriter, predictions_table, responses_table


def condition_batch(inputs: list[Inputs], hidden: list[torch.Tensor], outcomes: list[Outcome],
                    layers: list[int], times, readouts: dict[str, np.ndarray], ragged: Collection[str] = ()
                    ) -> CondBatch:
    """Pack per-item inputs, span states [L+1, n, d], outcomes and readout fields (those named in `ragged`: per
    item rows) into one CondBatch over `layers`."""
    spans = [times(x) for x in inputs]
    return CondBatch(
        hidden=torch.cat([h[layers] for h in hidden], dim=1),
        lengths=[len(x.span) for x in inputs],
        seq=np.concatenate([x.span.numpy() for x in inputs]),
        pred=np.array([o.pred for o in outcomes]),
        correct=np.array([o.correct for o in outcomes]),
        score=np.array([o.score for o in outcomes]),
        response=[o.response for o in outcomes],
        reason=[o.reason for o in outcomes],
        loglik=_pad([o.logliks for o in outcomes]),
        word=np.concatenate([x.words if x.words is not None else np.full(len(x.span), -1) for x in inputs]),
        start_ms=np.concatenate([t[:, 0] for t in spans]),
        end_ms=np.concatenate([t[:, 1] for t in spans]),
        readouts={k: v for k, v in readouts.items() if k not in ragged},
        ragged={k: v for k, v in readouts.items() if k in ragged},
    )


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    """[B, max(1, max k)] option log-likelihoods, NaN where an item has fewer options (an open task has none)."""
    out = np.full((len(rows), max([1, *map(len, rows)])), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def dump_states(adapter: SpeechLM, rows: list[Row], style: str, out_path: str | Path, options: StatesOptions,
                model_id: str, config_hash: str = "", heatmap_ids: Collection[str] = ()) -> pd.DataFrame:
    """Run S and T for every row, write the store at `out_path` and return its predictions table. The readouts'
    ragged fields (the attention rows) are kept for the items `heatmap_ids` only.

    A row the spine skips is recorded in the store with its reason; when every row is skipped the store holds no
    item. A killed run leaves `<out_path>.partial`; calling again resumes with the rows not yet committed (skipped
    rows are met, and recorded, again).
    """
    layers = options.stored_layers(adapter.n_layers, model_id)
    readouts = readout_registry.enabled(options.readouts, heatmap_ids)
    ragged = readout_registry.field_shapes(readouts, adapter, ragged=True)
    writer = StoreWriter(
        out_path, model=model_id, layers=layers, d=adapter.hidden_size,
        n_options=max([1, *(len(r.item.choices) for r in rows)]), dtype=options.dtype, bitround_bits=options.bitround_bits,
        compression=options.compression,
        config_hash=config_hash, extra={"style": style, "norm": options.norm, "family": adapter.family, "n_layers": adapter.n_layers},
        readouts=readout_registry.field_shapes(readouts, adapter), ragged=ragged,
    )
    times = {"S": lambda x: adapter.position_times_ms(len(x.span)), "T": lambda x: np.full((len(x.span), 2), -1.0)}
    with writer:
        done = set(writer.done_ids)
        for batch in spine.run(adapter, [r for r in rows if r.id not in done], style, batch_items=options.batch_items,
                               hidden=True, readouts=readouts, desc=f"states {model_id}", done=writer.n_done,
                               respond=options.generates, decoding=as_dict(options.decoding),
                               workers=options.num_workers):
            for skipped in batch.skipped:
                writer.skip(skipped.id, skipped.condition, skipped.reason)
            if not batch.rows:
                continue
            conds = {}
            for c, fwd in batch.forwards.items():
                scored = outcomes(adapter, fwd.prefills, batch.items, style, options.norm, batch.responses[c])
                conds[c] = condition_batch(fwd.inputs, [p.hidden for p in fwd.prefills], scored, layers, times[c],
                                           batch.readouts[c], set(ragged))
            writer.append([it.id for it in batch.items], conds)
    return predictions_table(StoreReader(out_path))


def accuracy_table(predictions: pd.DataFrame, n_skipped: int = 0, **labels: str) -> pd.DataFrame:
    """One row: `labels` (model, dataset, voice), text and speech accuracy (the mean score: the fraction correct for
    multiple choice), GAP in points, the item count, the items left unscored in either condition (not counted in the
    means) and the records of items skipped (not in `predictions`)."""
    score = predictions.pivot(index="id", columns="condition", values="score")
    scored = score.dropna()
    text, speech = float(scored["T"].mean()), float(scored["S"].mean())
    return pd.DataFrame([{**labels, "text_acc": text, "speech_acc": speech, "gap": round(100 * (text - speech), 2),
                          "n_items": len(scored), "n_unscored": len(score) - len(scored), "n_skipped": n_skipped}])


def run_shard(run: ModelRun, items_table: str | Path, shard: int, options: StatesOptions, out_path: str | Path,
              device: str | None = None) -> pd.DataFrame:
    """Dump one shard of a corpus items table for one model. `device` overrides `run.device` and is not part of
    the store's config hash, so a killed dump resumes on another GPU; the rendered prompts are (`prompt_ids`). The
    heatmap items are the first `attention_heatmap_items` rows of shard 0 (the first test items)."""
    rows, style = read_shard(items_table, shard, options.shard_items, options.max_items)
    adapter = load_run(run, device)
    # the items too: a killed dump resumes only onto the same rows (a rebuilt corpus starts over)
    items = [(r.id, r.audio, r.spans.tolist()) for r in rows]
    settings = {k: v for k, v in as_dict(options).items() if k != "num_workers"}  # how, not what, is computed
    fingerprint = [run.to_dict(), settings, items, adapter.prompt_ids(style)]
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    heatmap_ids = [r.id for r in rows[: options.attention_heatmap_items]] if shard == 0 else []
    return dump_states(adapter, rows, style, out_path, options, run.name, config_hash=digest[:12],
                       heatmap_ids=heatmap_ids)


def write_tables(stores: list[str], labels: dict, predictions_out: str | Path, accuracy_out: str | Path,
                 responses_out: str | Path, skipped_out: str | Path) -> pd.DataFrame:
    """Concatenate the shards' predictions and responses (Parquet) and skipped items (CSV: shard, id, condition,
    reason) and write the model's accuracy row (CSV); ValueError naming the labels and the first reason when every
    item was skipped."""
    readers = [StoreReader(s) for s in stores]
    pred = pd.concat([predictions_table(r) for r in readers], ignore_index=True)
    skipped = pd.concat([r.skipped().assign(shard=Path(r.path).stem) for r in readers], ignore_index=True)
    if pred.empty:
        raise ValueError(f"{'/'.join(map(str, labels.values()))}: every item was skipped ({len(skipped)}; first: "
                         f"{skipped['reason'].iloc[0] if len(skipped) else 'none recorded'})")
    acc = accuracy_table(pred, len(skipped), **labels)
    write_parquet(pred.drop(columns="item"), predictions_out)
    write_parquet(pd.concat([responses_table(r) for r in readers], ignore_index=True), responses_out)
    write_csv(skipped[["shard", "id", "condition", "reason"]], skipped_out)
    write_csv(acc, accuracy_out)
    return acc
