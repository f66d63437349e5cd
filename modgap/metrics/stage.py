"""Metrics stage driver: stream one (model, dataset, voice)'s stores, compute every metric, write the tables.

Two passes over the stores, one item batch in memory at a time: pass 1 computes the per-item metrics, the DTW paths
and the CKA and moment statistics; pass 2 the standardized L2, which needs pass 1's pooled moments. Peak memory
does not grow with the number of items (the kept DTW paths are a few int pairs per item).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from modgap.atomic import write_csv, write_parquet, write_text
from modgap.corpus.table import read_rows
from modgap.options import as_dict
from modgap.states.store import StoreReader

from .cka import CKAAccumulator, MinibatchCKA, cka_accumulator, cka_readouts, matrix_agreement
from .dtw import aligned_pairs
from .item import DTWConfig, ItemStates, base_paths, dtw_layer_truth, dtw_score, layer_metrics
from .moments import MomentAccumulator, standardized_l2
from .options import CKAOptions, MetricsOptions

log = logging.getLogger("modgap")
ESTIMATORS = {"biased": False, "unbiased": True}


def dtw_configs(options: MetricsOptions, layers: list[int]) -> list[DTWConfig]:
    """The default DTW configuration, then each distinct stability one (unset keys from the default). A base layer
    past the last stored layer is capped to it (the configured and the used layers go to the metadata)."""
    configs: list[DTWConfig] = []
    for override in [{}, *options.cka.stability]:
        spec = {**as_dict(options.dtw), **override}
        if spec["base_layer"] not in layers and spec["base_layer"] <= layers[-1]:
            raise ValueError(f"config key metrics.dtw.base_layer: layer {spec['base_layer']} is not stored "
                             f"(stored: {layers})")
        base_layer = min(spec["base_layer"], layers[-1])
        config = DTWConfig(base_layer, layers.index(base_layer), spec["metric"], spec["band"])
        if config not in configs:
            configs.append(config)
    return configs


@dataclass
class StoredItem:
    """One item read from a store: its id and correctness per condition, its states on the metrics device, and its
    per-layer readout values `{field}_{cond}` -> [stored layers]."""

    id: str
    correct_S: int
    correct_T: int
    states: ItemStates
    readouts: dict[str, np.ndarray]


def layer_readouts(reader: StoreReader) -> dict[str, np.ndarray]:
    """`{field}_{cond}` -> [items, stored layers] for every readout field stored per layer (shape [L+1])."""
    n_layers = reader.manifest["layers"]
    out = {}
    for field, shape in reader.readout_fields.items():
        if len(shape) == 1 and shape[0] > max(n_layers):
            for c in reader.conds:
                out[f"{field}_{c}"] = reader.readout(c, field)[:, n_layers]
    return out


def stored_items(store: str | Path, word_spans: dict[str, np.ndarray], device: torch.device) -> Iterator[StoredItem]:
    """Stream the items of one store (`word_spans`: item id -> true word spans `[W, 2]` in ms)."""
    reader = StoreReader(store)
    pos = {c: reader.positions(c) for c in ("S", "T")}
    off = {c: reader.offsets(c) for c in ("S", "T")}
    table = reader.items_table()
    readouts = layer_readouts(reader)
    for (i, hs), (_, ht) in zip(reader.iter_items("S"), reader.iter_items("T")):
        item_id = reader.items[i]
        if item_id not in word_spans:
            raise KeyError(f"store {store}: item {item_id} is not in the corpus table")
        s = pos["S"].iloc[off["S"][i]: off["S"][i + 1]]
        t = pos["T"].iloc[off["T"][i]: off["T"][i + 1]]
        states = ItemStates(
            hs=hs.to(device), ht=ht.to(device),
            speech_ms=torch.tensor(s[["start_ms", "end_ms"]].to_numpy(np.float32), device=device),
            text_words=torch.tensor(t["word"].to_numpy(np.int64), device=device),
            word_spans_ms=torch.as_tensor(word_spans[item_id], dtype=torch.float32, device=device),
        )
        yield StoredItem(item_id, int(table["correct_S"][i]), int(table["correct_T"][i]), states,
                         {k: v[i] for k, v in readouts.items()})


def batches(stores: list[str], word_spans: dict[str, np.ndarray], device: torch.device, size: int
            ) -> Iterator[list[StoredItem]]:
    """Items of all shards in order, `size` at a time."""
    batch: list[StoredItem] = []
    for store in stores:
        for item in stored_items(store, word_spans, device):
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def estimator_accumulators(n: int, d: int, cka: CKAOptions, device: torch.device) -> dict[str, CKAAccumulator | MinibatchCKA]:
    """One CKA accumulator per estimator over `n` speech and text layers of width d; the exact accumulator holds the
    sums of both estimators, so it is shared (half the memory of one per estimator)."""
    make = lambda unbiased: cka_accumulator(n, n, d, d, unbiased, mode=cka.mode, max_bytes=cka.max_bytes,  # noqa: E731
                                            device=device)
    biased = make(False)
    return {"biased": biased, "unbiased": biased if isinstance(biased, CKAAccumulator) else make(True)}


def cka_result(acc: CKAAccumulator | MinibatchCKA, unbiased: bool) -> Tensor:
    """`[L, M]` CKA of one estimator from its accumulator."""
    return acc.result(unbiased) if isinstance(acc, CKAAccumulator) else acc.result()


class MetricsRun:
    """Accumulates one (model, dataset, voice)'s metrics over its stores."""

    def __init__(self, stores: list[str], corpus: pd.DataFrame, options: MetricsOptions, device: torch.device) -> None:
        first = StoreReader(stores[0])
        self.stores, self.options, self.device = stores, options, device
        self.layers: list[int] = first.layers
        self.manifests = [StoreReader(s).manifest for s in stores]
        self.word_spans = {r.id: r.spans for r in read_rows(corpus, options.truth)}
        self.subjects = dict(zip(corpus["id"], corpus["subject"]))
        self.configs = dtw_configs(options, self.layers)
        n, d = len(self.layers), first.manifest["d"]
        self.cka = {c: estimator_accumulators(n, d, options.cka, device) for c in self.configs}
        self.moments = MomentAccumulator((n, d), device=device)
        self.paths: dict[str, Tensor] = {}  # default-config DTW path per item, for pass 2
        self.columns: dict[str, list[np.ndarray]] = {}

    def _batches(self, desc: str) -> Iterator[list[StoredItem]]:
        total = sum(m["n_items"] for m in self.manifests)
        with tqdm(total=total, desc=desc, mininterval=5) as bar:
            for batch in batches(self.stores, self.word_spans, self.device, self.options.batch_items):
                yield batch
                bar.update(len(batch))

    def first_pass(self) -> None:
        default = self.configs[0]
        for batch in self._batches("metrics"):
            matrices = [b.states.matrices() for b in batch]
            scores = {m: [dtw_score(x, m) for x in matrices] for m in {c.metric for c in self.configs}}
            truth = dtw_layer_truth([b.states for b in batch], scores[default.metric], default.band)
            for config in self.configs:
                for b, path in zip(batch, base_paths(scores[config.metric], config)):
                    xs, ys = aligned_pairs(b.states.hs, b.states.ht, path, self.options.pairs)
                    for acc in {id(a): a for a in self.cka[config].values()}.values():  # shared when exact
                        acc.update(xs, ys)
                    if config == default:
                        self.moments.update(torch.cat([xs, ys], dim=1))
                        self.paths[b.id] = path.to("cpu", torch.int32)
            for b, mats, gt in zip(batch, matrices, truth):
                self._add_rows(b, {**layer_metrics(b.states, mats), **gt})

    def _add_rows(self, item: StoredItem, values: dict[str, Tensor]) -> None:
        """Append one item's per-layer values to the column buffers (plain arrays: small, and no per-item frame)."""
        n = len(self.layers)
        columns = {"id": [item.id] * n, "subject": [self.subjects[item.id]] * n, "layer": self.layers,
                   **{k: v.detach().float().cpu().numpy() for k, v in values.items()},
                   **item.readouts, "correct_S": [item.correct_S] * n, "correct_T": [item.correct_T] * n,
                   "n_S": [item.states.hs.shape[1]] * n, "n_T": [item.states.ht.shape[1]] * n}
        for k, v in columns.items():
            self.columns.setdefault(k, []).append(np.asarray(v))

    def second_pass(self) -> dict[str, np.ndarray]:
        """Standardized L2 `[layers]` per item, z-scored with the pooled moments of every aligned pair."""
        std = self.moments.std
        out = {}
        for batch in self._batches("standardized l2"):
            for b in batch:
                path = self.paths[b.id].to(self.device, torch.long)
                xs, ys = aligned_pairs(b.states.hs, b.states.ht, path, self.options.pairs)
                out[b.id] = standardized_l2(xs, ys, std).float().cpu().numpy()
        return out

    def items_table(self, std_l2: dict[str, np.ndarray]) -> pd.DataFrame:
        table = pd.DataFrame({k: np.concatenate(v) for k, v in self.columns.items()})
        table["std_l2"] = np.concatenate([std_l2[i] for i in table["id"].drop_duplicates()])
        return table

    def cka_table(self) -> pd.DataFrame:
        """Long table: config, base_layer, metric, band, estimator, speech_layer, text_layer, cka."""
        li, mi = np.meshgrid(self.layers, self.layers, indexing="ij")
        frames = [
            pd.DataFrame({
                "config": config.label, "base_layer": config.base_layer, "metric": config.metric,
                "band": -1 if config.band is None else config.band, "estimator": estimator,
                "speech_layer": li.ravel(), "text_layer": mi.ravel(),
                "cka": cka_result(acc, ESTIMATORS[estimator]).double().cpu().numpy().ravel(),
            })
            for config, accumulators in self.cka.items() for estimator, acc in accumulators.items()
        ]
        return pd.concat(frames, ignore_index=True)

    def metadata(self, labels: dict) -> dict:
        return {**labels, "options": as_dict(self.options), "layers": self.layers, "device": str(self.device),
                "dtw_configs": [asdict(c) | {"label": c.label} for c in self.configs],
                "stores": [{"path": str(s), "config_hash": m.get("config_hash"), "model": m["model"]}
                           for s, m in zip(self.stores, self.manifests)]}


def cka_readout_table(cka: pd.DataFrame, tau: float) -> pd.DataFrame:
    """Per config, estimator and speech layer: best-match text layer and band width at `tau`."""
    rows = []
    for (config, estimator), g in cka.groupby(["config", "estimator"], sort=False):
        m = g.pivot(index="speech_layer", columns="text_layer", values="cka")
        best, width = cka_readouts(torch.tensor(m.to_numpy()), tau)
        rows.append(pd.DataFrame({"config": config, "estimator": estimator, "speech_layer": m.index,
                                  "best_text_layer": m.columns.to_numpy()[best.numpy()], "band_width": width.numpy(),
                                  "tau": tau}))
    return pd.concat(rows, ignore_index=True)


def summary(items: pd.DataFrame, cka: pd.DataFrame, readouts: pd.DataFrame, meta: dict) -> dict:
    """Headline numbers: layer-averaged means (layer 0 per `include_layer0`), per-layer means, CKA stability."""
    layer_avg = items if meta["options"]["include_layer0"] else items[items["layer"] != 0]
    metric_cols = [c for c in items.columns if c not in ("id", "subject", "layer", "n_S", "n_T")]
    per_item = layer_avg.groupby("id")[metric_cols].mean()
    matrices = {k: g.pivot(index="speech_layer", columns="text_layer", values="cka").to_numpy()
                for k, g in cka.groupby(["config", "estimator"], sort=False)}
    default = meta["dtw_configs"][0]["label"]
    stability = {f"{c}/{e}": _num(matrix_agreement(torch.tensor(m), torch.tensor(matrices[default, e])))
                 for (c, e), m in matrices.items() if c != default}
    return {
        **meta,
        "n_items": int(items["id"].nunique()),
        "text_acc": float(per_item["correct_T"].mean()), "speech_acc": float(per_item["correct_S"].mean()),
        "layer_averaged": {c: _num(per_item[c].mean()) for c in metric_cols if not c.startswith("correct")},
        "per_layer": {c: {int(k): _num(v) for k, v in items.groupby("layer")[c].mean().items()}
                      for c in metric_cols if not c.startswith("correct")},
        "cka_readouts": readouts[readouts["config"] == default].to_dict("list"),
        "cka_stability_vs_default": stability,
    }


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def run_metrics(stores: list[str], corpus_table: str | Path, options: MetricsOptions, device: str, labels: dict,
                out: dict[str, str | Path]) -> dict:
    """Compute and write `out["item_metrics"]` (Parquet, one row per item and layer), `out["cka"]` (Parquet, long),
    `out["readouts"]` (CSV) and `out["summary"]` (JSON); the options and inputs go to every output's metadata."""
    t0 = time.perf_counter()
    run = MetricsRun(stores, pd.read_parquet(corpus_table), options, torch.device(device))
    run.first_pass()
    items = run.items_table(run.second_pass())
    cka = run.cka_table()
    readouts = cka_readout_table(cka, options.cka.tau)
    meta = run.metadata(labels)
    for table in (items, cka):
        table.attrs["modgap"] = meta
    write_parquet(items, out["item_metrics"])
    write_parquet(cka, out["cka"])
    write_csv(readouts, out["readouts"])
    result = summary(items, cka, readouts, meta) | {"seconds": round(time.perf_counter() - t0, 2)}
    write_text(json.dumps(result, indent=1, default=str, allow_nan=False), out["summary"])
    log.info("metrics of %d items in %.1f s on %s", result["n_items"], result["seconds"], device)
    return result
