"""Per-layer probes of the gold option on the decision-position states (P2 Fig. 7), fitted from the store.

At each layer l a probe reads the decision state h_l [d] (the store's `decision_state` readout, hook point l at the
prompt's last position) and predicts the gold option's index: a linear probe (logistic regression) and an MLP with
one hidden layer, both on standardised features and seeded. The states pass stores the test split only, so every
accuracy is cross-validated by item (GroupKFold over item ids, `probes.folds`): a probe never sees the item it is
scored on, in any condition. Conditions: S and T (fitted and scored on the condition's own states) and T->S (fitted
on T, scored on S: how much of the text probe's reading transfers to speech). Subsets: all items, and the items text
gets right and speech gets wrong. Control (Hewitt & Liang 2019): the same probe on the gold labels shuffled once per
layer (class balance kept, the link to the states cut); selectivity = accuracy - control accuracy.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from modgap.atomic import write_csv
from modgap.options import StageOptions
from modgap.states.store import StoreReader

FIELD = "decision_state"
PROBES = ("linear", "mlp")
CONDITIONS = {"S": ("S", "S"), "T": ("T", "T"), "T->S": ("T", "S")}  # reported as: (fitted on, scored on)
COLUMNS = ["layer", "condition", "probe", "subset", "accuracy", "control_accuracy", "selectivity", "n_items"]


@dataclass(frozen=True)
class ProbesOptions(StageOptions):
    """Whether probes run, GroupKFold folds, the seed of folds, MLP and control shuffle, the MLP's width and the
    solvers' iteration cap."""

    section: ClassVar[str] = "probes"

    enabled: bool
    folds: int
    seed: int
    mlp_hidden: int
    max_iter: int


def make_probe(kind: str, options: ProbesOptions) -> Pipeline:
    """A fresh, seeded probe of `kind` ("linear" or "mlp") behind a StandardScaler."""
    if kind == "linear":
        head = LogisticRegression(max_iter=options.max_iter)
    elif kind == "mlp":
        head = MLPClassifier(hidden_layer_sizes=(options.mlp_hidden,), max_iter=options.max_iter,
                             random_state=options.seed)
    else:
        raise ValueError(f"probe kind {kind!r}: expected one of {PROBES}")
    return make_pipeline(StandardScaler(), head)


def held_out_predictions(kind: str, fit_on: np.ndarray, score_on: Mapping[str, np.ndarray], labels: np.ndarray,
                         groups: np.ndarray, options: ProbesOptions) -> dict[str, np.ndarray]:
    """Cross-validated predictions: per GroupKFold fold, a probe fitted on `fit_on` [n, d] of the training items
    predicts each array of `score_on` ([n, d] each) at the held-out items. labels, groups: [n]. A fold whose
    training labels have one class predicts that class. Returns name -> [n] predicted labels."""
    folds = GroupKFold(min(options.folds, len(np.unique(groups))), shuffle=True, random_state=options.seed)
    pred = {k: np.empty(len(labels), labels.dtype) for k in score_on}
    for train, test in folds.split(fit_on, labels, groups):
        if len(np.unique(labels[train])) < 2:
            for k in pred:
                pred[k][test] = labels[train][0]
            continue
        with warnings.catch_warnings():  # an unconverged probe is still a probe: max_iter is the config's choice
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe = make_probe(kind, options).fit(fit_on[train], labels[train])
        for k, x in score_on.items():
            pred[k][test] = probe.predict(x[test])
    return pred


def control_labels(labels: np.ndarray, layer: int, seed: int) -> np.ndarray:
    """The control task's labels at `layer`: `labels` [n] permuted (seeded by seed and layer)."""
    return np.random.default_rng([seed, layer]).permutation(labels)


def probe_table(states: Mapping[str, np.ndarray], labels: np.ndarray, groups: np.ndarray,
                subsets: Mapping[str, np.ndarray], options: ProbesOptions) -> pd.DataFrame:
    """Accuracy, control accuracy and selectivity per layer, condition (`CONDITIONS`), probe and subset.

    states: condition -> [n, layers, d] decision states; labels: [n] gold option indices; groups: [n] item ids;
    subsets: name -> [n] bool mask of the items scored (every probe is fitted on all training items)."""
    rows = []
    for layer in range(states["S"].shape[1]):
        control = control_labels(labels, layer, options.seed)
        for kind in PROBES:
            for fit in ("S", "T"):
                scored = {name: states[on][:, layer] for name, (f, on) in CONDITIONS.items() if f == fit}
                pred = held_out_predictions(kind, states[fit][:, layer], scored, labels, groups, options)
                ctrl = held_out_predictions(kind, states[fit][:, layer], scored, control, groups, options)
                for name in scored:
                    for subset, mask in subsets.items():
                        acc = float(np.mean(pred[name][mask] == labels[mask])) if mask.any() else np.nan
                        ctrl_acc = float(np.mean(ctrl[name][mask] == control[mask])) if mask.any() else np.nan
                        rows.append((layer, name, kind, subset, acc, ctrl_acc, acc - ctrl_acc, int(mask.sum())))
    return pd.DataFrame(rows, columns=COLUMNS)


def stored_decision_states(stores: list[str]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Decision states (condition -> [items, L+1, d]) and items table of the shards, concatenated in order;
    ValueError naming a store without the field."""
    states: dict[str, list[np.ndarray]] = {"S": [], "T": []}
    tables = []
    for store in stores:
        reader = StoreReader(store)
        if FIELD not in reader.readout_fields:
            raise ValueError(f"store {store}: no {FIELD!r} readout; the probes need states.readouts to list decision")
        for c in states:
            states[c].append(reader.readout(c, FIELD))
        tables.append(reader.items_table())
    return {c: np.concatenate(v) for c, v in states.items()}, pd.concat(tables, ignore_index=True)


def run_probes(stores: list[str], table: str | Path, options: ProbesOptions, labels: Mapping[str, str],
               out: str | Path) -> pd.DataFrame:
    """Probe tables of one (model, dataset, voice) from its shard stores and corpus table (for the gold options),
    written to `out` (CSV, `labels` as leading columns). Items without options (open tasks) are left out; a dataset
    with none writes the header only."""
    states, items = stored_decision_states(stores)
    corpus = pd.read_parquet(table, columns=["id", "choices", "answer"]).set_index("id")
    gold = corpus.reindex(items["id"])
    keep = (gold["choices"].map(lambda c: c is not None and len(c) >= 2) & (gold["answer"] >= 0)).to_numpy()
    result = pd.DataFrame(columns=COLUMNS)
    if keep.any():
        subsets = {"all": np.ones(int(keep.sum()), bool),
                   "text_right_speech_wrong": ((items["score_T"] == 1) & (items["score_S"] == 0)).to_numpy()[keep]}
        result = probe_table({c: s[keep] for c, s in states.items()}, gold["answer"].to_numpy(np.int64)[keep],
                             items["id"].to_numpy()[keep], subsets, options)
    result = pd.concat([pd.DataFrame({k: [v] * len(result) for k, v in labels.items()}), result], axis=1)
    write_csv(result, out)
    return result
