"""Metrics stage driver: stream one (model, dataset, voice)'s stores, compute every metric, write the tables.

Two passes over the stores, one item batch in memory at a time: pass 1 computes the per-item metrics with their
baselines (time-proportional and seeded random paths, classical min-cost DTW), the DTW paths and the CKA and moment
statistics under DTW and true-word pairing, the layer-update synchrony on both pairings with its shuffled-pair
control, the DTW base-layer sensitivity (every analysed layer as the base layer), and the CKA permutation null;
pass 2 the standardized L2, which needs pass 1's pooled moments. Peak memory grows with the number of items only
through the kept DTW paths (a few int pairs per item), the base-layer path agreements (one float per item and
layer) and, when `metrics.cka.n_boot` > 0, each item's default-pairing rows for the readout bootstrap.
The post-norm last state is left out of every metric unless `metrics.last_layer: include`.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from modgap.atomic import write_csv, write_parquet, write_text
from modgap.corpus.table import read_rows
from modgap.options import as_dict, check_layer
from modgap.states.store import StoreReader

from .baselines import hit_rate, path_baseline_columns, random_path, truth_aligned_pairs, truth_pairs
from .cka import CKAAccumulator, MinibatchCKA, cka_accumulator, cka_readouts
from .dtw import aligned_pairs
from .base_layers import BaseLayerSensitivity
from .item import DTWConfig, ItemStates, base_paths, dtw_layer_truth, dtw_score, layer_metrics, layer_paths
from .moments import MomentAccumulator, standardized_l2
from .null import AccumulatorFactory, CKAPermutationNull, accumulator_result, bootstrap_readouts, readout_stability
from .options import CKAOptions, MetricsOptions
from .synchrony import shuffled_synchrony, update_synchrony

log = logging.getLogger("modgap")
ESTIMATORS = {"biased": False, "unbiased": True}
TRUTH = "truth-pairs"  # the CKA configuration that pairs each text token with the speech positions of its true word
MIN_TRUTH_ITEMS = 4  # the unbiased estimator's minimum


def dtw_configs(options: MetricsOptions, layers: list[int], model: str, n_layers: int) -> list[DTWConfig]:
    """The default DTW configuration, then each distinct stability one (unset keys from the default), for `model`
    with `n_layers` decoder blocks analysed at `layers`. ValueError naming the key (`metrics.dtw.base_layer` or
    `metrics.cka.stability[i].base_layer`) when a base layer is outside the model's range or not analysed."""
    configs: list[DTWConfig] = []
    keys = ["metrics.dtw", *(f"metrics.cka.stability[{i}]" for i in range(len(options.cka.stability)))]
    for key, override in zip(keys, [{}, *options.cka.stability]):
        spec = {**as_dict(options.dtw), **override}
        key = f"{key if 'base_layer' in override else 'metrics.dtw'}.base_layer"
        base_layer = check_layer(key, spec["base_layer"], model, n_layers)
        if base_layer not in layers:
            raise ValueError(f"{key}: layer {base_layer} of {model} is not analysed (analysed: {layers}; "
                             "metrics.last_layer and states.layers choose them)")
        config = DTWConfig(base_layer, layers.index(base_layer), spec["metric"], spec["band"])
        if config not in configs:
            configs.append(config)
    return configs


@dataclass
class StoredItem:
    """One item read from a store: its id and score per condition (correct_*: 0/1 for multiple choice, in [0, 1] for
    an open task, NaN where unscored), its states on the metrics device, and its per-layer readout values
    `{field}_{cond}` -> [stored layers]."""

    id: str
    correct_S: float
    correct_T: float
    states: ItemStates
    readouts: dict[str, np.ndarray]


def model_depth(reader: StoreReader) -> int:
    """The stored model's number of decoder blocks L, its last hidden state (stores without it: the last stored
    layer)."""
    return int(reader.manifest.get("extra", {}).get("n_layers", max(reader.layers)))


def analysed_layers(reader: StoreReader, last_layer: str) -> list[int]:
    """The stored layers the metrics use: all, or (`last_layer` "exclude") without the model's last state, which
    `output_hidden_states` returns after the final norm."""
    final = model_depth(reader)
    return [l for l in reader.layers if last_layer == "include" or l != final]


def layer_readouts(reader: StoreReader, layers: list[int]) -> dict[str, np.ndarray]:
    """`{field}_{cond}` -> [items, len(layers)] for every readout field stored per layer (shape [L+1]) or per item
    (shape [], repeated over the layers, e.g. the span length of a readout's baseline)."""
    out = {}
    for field, shape in reader.readout_fields.items():
        if len(shape) == 1 and shape[0] > max(reader.layers):
            for c in reader.conds:
                out[f"{field}_{c}"] = reader.readout(c, field)[:, layers]
        elif shape == ():
            for c in reader.conds:
                out[f"{field}_{c}"] = np.repeat(reader.readout(c, field)[:, None], len(layers), 1)
    return out


def stored_items(store: str | Path, word_spans: dict[str, np.ndarray], device: torch.device, layers: list[int]
                 ) -> Iterator[StoredItem]:
    """Stream the items of one store at `layers` (`word_spans`: item id -> true word spans `[W, 2]` in ms)."""
    reader = StoreReader(store)
    positions = {c: reader.positions(c) for c in ("S", "T")}
    speech_ms = positions["S"][["start_ms", "end_ms"]].to_numpy(np.float32)
    text_words = positions["T"]["word"].to_numpy(np.int64)
    off = {c: reader.offsets(c) for c in ("S", "T")}
    table = reader.items_table()
    readouts = layer_readouts(reader, layers)
    for (i, hs), (_, ht) in zip(reader.iter_items("S", layers), reader.iter_items("T", layers)):
        item_id = reader.items[i]
        if item_id not in word_spans:
            raise KeyError(f"store {store}: item {item_id} is not in the corpus table")
        states = ItemStates(
            hs=hs.to(device), ht=ht.to(device),
            speech_ms=torch.tensor(speech_ms[off["S"][i]: off["S"][i + 1]], device=device),
            text_words=torch.tensor(text_words[off["T"][i]: off["T"][i + 1]], device=device),
            word_spans_ms=torch.as_tensor(word_spans[item_id], dtype=torch.float32, device=device),
        )
        yield StoredItem(item_id, float(table["score_S"][i]), float(table["score_T"][i]), states,
                         {k: v[i] for k, v in readouts.items()})


def batches(stores: list[str], word_spans: dict[str, np.ndarray], device: torch.device, size: int,
            layers: list[int]) -> Iterator[list[StoredItem]]:
    """Items of all shards in order, `size` at a time."""
    batch: list[StoredItem] = []
    for store in stores:
        for item in stored_items(store, word_spans, device, layers):
            batch.append(item)
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def accumulator_factory(cka: CKAOptions, device: torch.device) -> AccumulatorFactory:
    """`(L, M, d_x, d_y, unbiased=False) -> accumulator`: `cka.cka_accumulator` in the configured mode and memory
    cap, on `device` (the configurations', the true-word pairing's and the null's accumulators)."""
    return partial(cka_accumulator, unbiased=False, mode=cka.mode, max_bytes=cka.max_bytes, device=device)


def estimator_accumulators(n: int, d: int, make: AccumulatorFactory) -> dict[str, CKAAccumulator | MinibatchCKA]:
    """One CKA accumulator per estimator over `n` speech and text layers of width d; the exact accumulator holds the
    sums of both estimators, so it is shared (half the memory of one per estimator)."""
    biased = make(n, n, d, d)
    unbiased = biased if isinstance(biased, CKAAccumulator) else make(n, n, d, d, unbiased=True)
    return {"biased": biased, "unbiased": unbiased}


class MetricsRun:
    """Accumulates one (model, dataset, voice)'s metrics over its stores."""

    def __init__(self, stores: list[str], corpus: pd.DataFrame, options: MetricsOptions, device: torch.device) -> None:
        first = StoreReader(stores[0])
        self.stores, self.options, self.device = stores, options, device
        self.layers: list[int] = analysed_layers(first, options.last_layer)
        self.manifests = [StoreReader(s).manifest for s in stores]
        if not sum(m["n_items"] for m in self.manifests):
            raise ValueError(f"{first.manifest['model']}: no item in its stores {', '.join(map(str, stores))} "
                             f"({sum(len(m.get('skipped', [])) for m in self.manifests)} skipped by the states stage)")
        self.word_spans = {r.id: r.spans for r in read_rows(corpus, options.truth)}
        self.subjects = dict(zip(corpus["id"], corpus["subject"]))
        self.configs = dtw_configs(options, self.layers, first.manifest["model"], model_depth(first))
        n, d, cka = len(self.layers), first.manifest["d"], options.cka
        make = accumulator_factory(cka, device)
        self.cka = {c.label: estimator_accumulators(n, d, make) for c in self.configs}
        self.cka[TRUTH] = estimator_accumulators(n, d, make)
        self.n_truth = 0  # items with at least one true-word pair
        self.moments = {"dtw": MomentAccumulator((n, d), device=device), TRUTH: MomentAccumulator((n, d), device=device)}
        self.null = CKAPermutationNull(cka.n_perm, options.seed, device=device,  # a control: float32 products suffice
                                       make_accumulator=partial(make, product_dtype=torch.float32))
        self.boot_rows: list[tuple[Tensor, Tensor]] = []  # default-pairing rows per item, for the readout bootstrap
        self.random = torch.Generator().manual_seed(options.seed)
        self.shuffle = torch.Generator().manual_seed(options.seed)  # the synchrony control's derangements
        self.base_layers = BaseLayerSensitivity(self.layers, self.configs[0].base, options.pairs,
                                                options.base_layer_cka_batch, device)
        self.paths: dict[str, Tensor] = {}  # default-config DTW path per item, for pass 2
        self.columns: dict[str, list[np.ndarray]] = {}

    def _batches(self, desc: str) -> Iterator[list[StoredItem]]:
        total = sum(m["n_items"] for m in self.manifests)
        with tqdm(total=total, desc=desc, mininterval=5) as bar:
            for batch in batches(self.stores, self.word_spans, self.device, self.options.batch_items, self.layers):
                yield batch
                bar.update(len(batch))

    def _accumulate(self, label: str, xs: Tensor, ys: Tensor) -> None:
        for acc in {id(a): a for a in self.cka[label].values()}.values():  # shared when exact
            acc.update(xs, ys)

    def first_pass(self) -> None:
        default = self.configs[0]
        for batch in self._batches("metrics"):
            states = [b.states for b in batch]
            matrices = [x.matrices() for x in states]
            scores = {m: [dtw_score(x, m) for x in matrices] for m in {c.metric for c in self.configs}}
            paths = layer_paths(scores[default.metric], default.band)  # every layer as the base layer
            truth = dtw_layer_truth(states, paths)
            # classical min-cost DTW on 1 - cos: maximising sum(cos - 1) over the same paths
            mincost = dtw_layer_truth(states, layer_paths([m["cos"] - 1 for m in matrices], default.band))
            synchrony: dict[str, dict[str, Tensor]] = {}
            for config in self.configs:
                for b, path in zip(batch, self._base_paths(config, scores, paths)):
                    xs, ys = aligned_pairs(b.states.hs, b.states.ht, path, self.options.pairs)
                    self._accumulate(config.label, xs, ys)
                    if config == default:
                        self.moments["dtw"].update(torch.cat([xs, ys], dim=1))
                        self.paths[b.id] = path.to("cpu", torch.int32)
                        synchrony[b.id] = {"sync_dtw": update_synchrony(xs, ys),
                                           "sync_shuffled": shuffled_synchrony(xs, ys, self.shuffle)}
                        self.null.update(b.states.hs, b.states.ht, n_pairs=xs.shape[1])
                        if self.options.cka.n_boot:
                            self.boot_rows.append((xs.cpu(), ys.cpu()))
            for b, mats, gt, mc, item_paths in zip(batch, matrices, truth, mincost, paths):
                self.base_layers.update(b.states.hs, b.states.ht, item_paths)
                sync_truth = torch.full((len(self.layers),), float("nan"))
                if (pairs := self._truth_rows(b.states)) is not None:
                    self.n_truth += 1
                    self._accumulate(TRUTH, *pairs)
                    self.moments[TRUTH].update(torch.cat(pairs, dim=1))
                    sync_truth = update_synchrony(*pairs)
                values = {**layer_metrics(b.states, mats), **gt, **synchrony[b.id], "sync_truth": sync_truth,
                          "gt_hit_dtw_mincost": mc["gt_hit_dtw"], "gt_miss_ms_dtw_mincost": mc["gt_miss_ms_dtw"]}
                self._add_rows(b, values | self._baselines(b.states, values))

    def _base_paths(self, config: DTWConfig, scores: dict[str, list[Tensor]], layer_paths: list[list[Tensor]]
                    ) -> list[Tensor]:
        """One DTW path per item of the batch at `config`'s base layer: taken from the default configuration's
        every-layer paths `layer_paths` when `config` shares its metric and band, else computed from `scores`."""
        default = self.configs[0]
        if (config.metric, config.band) == (default.metric, default.band):
            return [item_paths[config.base] for item_paths in layer_paths]
        return base_paths(scores[config.metric], config)

    def _truth_rows(self, x: ItemStates) -> tuple[Tensor, Tensor] | None:
        """True-word pairing rows `([layers, n, d], [layers, n, d])` of one item, None when no token has a pair."""
        pairs = truth_pairs(x.text_words, x.speech_ms, x.word_spans_ms)
        return None if len(pairs) == 0 else truth_aligned_pairs(x.hs, x.ht, pairs, self.options.pairs)

    def _baselines(self, x: ItemStates, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per layer: the time-proportional path's hit rate, a seeded random path's and its expectation, and the
        argmax and DTW paths' lifts over the proportional path."""
        learned = values["gt_hit_argmax"]
        cols = path_baseline_columns(learned, x.speech_ms, x.text_words, x.word_spans_ms, "argmax")
        random = random_path(x.ht.shape[1], x.hs.shape[1], self.random).to(x.text_words.device)
        drawn = hit_rate(random, x.speech_ms, x.text_words, x.word_spans_ms).to(learned).expand_as(learned)
        return {"gt_hit_proportional": cols["gt_hit_proportional"], "gt_hit_random": drawn,
                "gt_hit_random_expected": cols["gt_hit_random"], "gt_lift_argmax": cols["gt_lift_argmax"],
                "gt_lift_dtw": values["gt_hit_dtw"] - cols["gt_hit_proportional"]}

    def _add_rows(self, item: StoredItem, values: dict[str, Tensor]) -> None:
        """Append one item's per-layer values to the column buffers (plain arrays: small, and no per-item frame)."""
        n = len(self.layers)
        columns = {"id": [item.id] * n, "subject": [self.subjects[item.id]] * n, "layer": self.layers,
                   **{k: v.detach().float().cpu().numpy() for k, v in values.items()},
                   **item.readouts, "correct_S": [item.correct_S] * n, "correct_T": [item.correct_T] * n,
                   "n_S": [item.states.hs.shape[1]] * n, "n_T": [item.states.ht.shape[1]] * n}
        for k, v in columns.items():
            self.columns.setdefault(k, []).append(np.asarray(v))

    def second_pass(self) -> dict[str, dict[str, np.ndarray]]:
        """Standardized L2 `[layers]` per item over DTW pairs (`std_l2`) and true-word pairs (`std_l2_truth`, NaN
        for an item without one), each z-scored with the pooled moments of its own pairing."""
        std = {k: m.std for k, m in self.moments.items()}
        out: dict[str, dict[str, np.ndarray]] = {"std_l2": {}, "std_l2_truth": {}}
        for batch in self._batches("standardized l2"):
            for b in batch:
                path = self.paths[b.id].to(self.device, torch.long)
                xs, ys = aligned_pairs(b.states.hs, b.states.ht, path, self.options.pairs)
                out["std_l2"][b.id] = standardized_l2(xs, ys, std["dtw"]).float().cpu().numpy()
                pairs = self._truth_rows(b.states)
                out["std_l2_truth"][b.id] = (np.full(len(self.layers), np.nan, np.float32) if pairs is None
                                             else standardized_l2(*pairs, std[TRUTH]).float().cpu().numpy())
        return out

    def items_table(self, std_l2: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
        table = pd.DataFrame({k: np.concatenate(v) for k, v in self.columns.items()})
        for column, values in std_l2.items():
            table[column] = np.concatenate([values[i] for i in table["id"].drop_duplicates()])
        return table

    def cka_table(self) -> pd.DataFrame:
        """Long table: config (each DTW configuration, then `TRUTH`), base_layer, metric, band, estimator,
        speech_layer, text_layer, cka, and against the permutation null (the same for every configuration: its pairs
        need no alignment) null_mean, null_std, cka_excess = cka - null_mean, cka_z."""
        li, mi = np.meshgrid(self.layers, self.layers, indexing="ij")
        specs = {c.label: (c.base_layer, c.metric, -1 if c.band is None else c.band) for c in self.configs}
        specs[TRUTH] = (-1, "truth", -1)
        nulls = {e: self.null.result(u) for e, u in ESTIMATORS.items()}
        frames = []
        if self.n_truth < MIN_TRUTH_ITEMS:
            log.warning("CKA on true-word pairs left out: only %d items have a pair", self.n_truth)
        for label, accumulators in self.cka.items():
            if label == TRUTH and self.n_truth < MIN_TRUTH_ITEMS:
                continue
            for estimator, acc in accumulators.items():
                cka = accumulator_result(acc, ESTIMATORS[estimator]).double().cpu()
                contrast = {k: v.cpu().numpy().ravel() for k, v in nulls[estimator].contrast(cka).items()}
                base, metric, band = specs[label]
                frames.append(pd.DataFrame({
                    "config": label, "base_layer": base, "metric": metric, "band": band, "estimator": estimator,
                    "speech_layer": li.ravel(), "text_layer": mi.ravel(), "cka": cka.numpy().ravel(),
                    "null_mean": contrast["null_mean"], "null_std": contrast["null_std"],
                    "cka_excess": contrast["excess"], "cka_z": contrast["z"],
                }))
        return pd.concat(frames, ignore_index=True)

    def bootstrap(self) -> pd.DataFrame | None:
        """Per speech layer of the default configuration (biased estimator): the fraction of item resamples whose
        best-match text layer and band width equal the full data's, and the mean band Jaccard; None when off."""
        if not self.options.cka.n_boot:
            return None
        boot = bootstrap_readouts(self.boot_rows, self.options.cka.n_boot, self.options.seed, self.options.cka.tau)
        return pd.DataFrame({"config": self.configs[0].label, "estimator": "biased", "speech_layer": self.layers,
                             "best_agreement": boot.best_agreement.numpy(),
                             "width_agreement": boot.width_agreement.numpy(),
                             "band_jaccard_boot": boot.band_jaccard.numpy(), "n_boot": self.options.cka.n_boot})

    def metadata(self, labels: dict) -> dict:
        return {**labels, "options": as_dict(self.options), "layers": self.layers, "device": str(self.device),
                "last_layer": ("included (after the final norm)" if self.options.last_layer == "include" else
                               "excluded (output_hidden_states' last state is after the final norm)"),
                "null": {"n_perm": self.options.cka.n_perm, "pairing": "proportional, speech items with other items' "
                         "text (seeded derangements in blocks)"},
                "dtw_configs": [asdict(c) | {"label": c.label} for c in self.configs],
                "stores": [{"path": str(s), "config_hash": m.get("config_hash"), "model": m["model"],
                            "n_skipped": len(m.get("skipped", []))} for s, m in zip(self.stores, self.manifests)]}


def cka_readout_table(cka: pd.DataFrame, tau: float, bootstrap: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per config, estimator and speech layer: best-match text layer and band width at `tau`, the best match of the
    null-corrected matrix (cka - null mean), and where a bootstrap ran, its agreement columns (NaN elsewhere)."""
    rows = []
    for (config, estimator), g in cka.groupby(["config", "estimator"], sort=False):
        m = g.pivot(index="speech_layer", columns="text_layer", values="cka")
        excess = g.pivot(index="speech_layer", columns="text_layer", values="cka_excess")
        best, width = cka_readouts(torch.tensor(m.to_numpy()), tau)
        best_excess, _ = cka_readouts(torch.tensor(excess.to_numpy()), tau)
        rows.append(pd.DataFrame({"config": config, "estimator": estimator, "speech_layer": m.index,
                                  "best_text_layer": m.columns.to_numpy()[best.numpy()], "band_width": width.numpy(),
                                  "best_text_layer_excess": m.columns.to_numpy()[best_excess.numpy()], "tau": tau}))
    table = pd.concat(rows, ignore_index=True)
    if bootstrap is None:
        return table
    return table.merge(bootstrap, on=["config", "estimator", "speech_layer"], how="left")


def summary(items: pd.DataFrame, cka: pd.DataFrame, readouts: pd.DataFrame, meta: dict) -> dict:
    """Headline numbers: layer-averaged means (layer 0 per `include_layer0`), per-layer means, and the stability of
    each other CKA configuration against the default: best-match agreement, band Jaccard, matrix correlation."""
    layer_avg = items if meta["options"]["include_layer0"] else items[items["layer"] != 0]
    metric_cols = [c for c in items.columns if c not in ("id", "subject", "layer", "n_S", "n_T")]
    per_item = layer_avg.groupby("id")[metric_cols].mean()
    matrices = {k: g.pivot(index="speech_layer", columns="text_layer", values="cka").to_numpy()
                for k, g in cka.groupby(["config", "estimator"], sort=False)}
    default = meta["dtw_configs"][0]["label"]
    tau = meta["options"]["cka"]["tau"]
    stability = {}
    for (c, e), m in matrices.items():
        if c != default:
            s = readout_stability(torch.tensor(m), torch.tensor(matrices[default, e]), tau)
            stability[f"{c}/{e}"] = {k: _num(v) for k, v in s.items() if k != "band_jaccard_per_layer"}
    return {
        **meta,
        "n_items": int(items["id"].nunique()),
        "text_acc": float(per_item["correct_T"].mean()), "speech_acc": float(per_item["correct_S"].mean()),
        "layer_averaged": {c: _num(per_item[c].mean()) for c in metric_cols if not c.startswith("correct")},
        "per_layer": {c: {int(k): _num(v) for k, v in items.groupby("layer")[c].mean().items()}
                      for c in metric_cols if not c.startswith("correct")},
        "cka_readouts": _records(readouts[readouts["config"] == default]),
        "cka_stability_vs_default": stability,
    }


def _records(table: pd.DataFrame) -> dict[str, list]:
    """Columns as lists for JSON, missing values as None."""
    return table.astype(object).where(table.notna(), None).to_dict("list")


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def run_metrics(stores: list[str], corpus_table: str | Path, options: MetricsOptions, device: str, labels: dict,
                out: dict[str, str | Path]) -> dict:
    """Compute and write `out["item_metrics"]` (Parquet, one row per item and layer), `out["cka"]` (Parquet, long),
    `out["readouts"]` (CSV), `out["base_layers"]` (CSV, `BaseLayerSensitivity.table`) and `out["summary"]` (JSON);
    the options and inputs go to every output's metadata."""
    t0 = time.perf_counter()
    run = MetricsRun(stores, pd.read_parquet(corpus_table), options, torch.device(device))
    run.first_pass()
    items = run.items_table(run.second_pass())
    cka = run.cka_table()
    readouts = cka_readout_table(cka, options.cka.tau, run.bootstrap())
    meta = run.metadata(labels)
    for table in (items, cka):
        table.attrs["modgap"] = meta
    write_parquet(items, out["item_metrics"])
    write_parquet(cka, out["cka"])
    write_csv(readouts, out["readouts"])
    write_csv(run.base_layers.table(), out["base_layers"])
    result = summary(items, cka, readouts, meta) | {"seconds": round(time.perf_counter() - t0, 2)}
    write_text(json.dumps(result, indent=1, default=str, allow_nan=False), out["summary"])
    log.info("metrics of %d items in %.1f s on %s", result["n_items"], result["seconds"], device)
    return result
