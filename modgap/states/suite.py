"""Suite scores: a benchmark suite's overall score per model, as VoiceBench reports it, the unweighted mean of the
per-dataset scores (each dataset one subset, whatever its size)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

SCORES = ("text_acc", "speech_acc")


def suite_table(accuracy: pd.DataFrame, suites: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One row per (suite, model): n_datasets, text_acc and speech_acc (unweighted means over the suite's datasets;
    a dataset voiced several ways counts once, at the mean over its voices), gap (points) and the datasets.

    accuracy: the states stage's accuracy table (columns model, dataset, voice, text_acc, speech_acc). A dataset
    without a score (every item unscored, e.g. sd-qa without PEDANT) makes its suite's score NaN rather than a mean
    over fewer datasets. ValueError naming the suite, model and dataset when a model lacks one of the datasets.
    """
    per_dataset = accuracy.groupby(["model", "dataset"], sort=False)[list(SCORES)].mean()
    rows = []
    for suite, datasets in suites.items():
        for model in accuracy["model"].drop_duplicates():
            have = per_dataset.loc[model]
            if missing := [d for d in datasets if d not in have.index]:
                raise ValueError(f"suite {suite}: model {model} has no accuracy for dataset(s) {missing}")
            mean = have.loc[list(datasets)].mean(skipna=False)
            rows.append({"suite": suite, "model": model, "n_datasets": len(datasets), "text_acc": mean["text_acc"],
                         "speech_acc": mean["speech_acc"],
                         "gap": round(100 * (mean["text_acc"] - mean["speech_acc"]), 2),
                         "datasets": ",".join(datasets)})
    return pd.DataFrame(rows, columns=["suite", "model", "n_datasets", *SCORES, "gap", "datasets"])
