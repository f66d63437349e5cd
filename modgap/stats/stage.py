"""Stats stage driver: gather every checkpoint's metrics table of one (dataset, voice), run `modgap.stats.analysis`, and
write CSV tables, one Markdown file with all of them, and a JSON of the headline numbers."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from modgap.stats import analysis as stats
from modgap.stats.options import StatsOptions
from modgap.tables import to_markdown
from modgap.atomic import write_csv, write_text
from modgap.checkpoints import parse_model

log = logging.getLogger("modgap")
def gather(tables: dict[str, str | Path]) -> pd.DataFrame:
    """Every model's metrics items table (one row per item and layer) with model, strategy and step columns."""
    frames = []
    for model, path in tables.items():
        frame = pd.read_parquet(path)
        frame.insert(0, "model", model)
        checkpoint = parse_model(model)
        frame["strategy"], frame["step"] = checkpoint.strategy, np.nan if checkpoint.step is None else checkpoint.step
        frames.append(frame)
    if not frames:
        raise ValueError("stats: no checkpoint to analyse (the models list is empty)")
    return pd.concat(frames, ignore_index=True)


def stat_tables(items: pd.DataFrame, options: StatsOptions, include_layer0: bool) -> dict[str, pd.DataFrame]:
    """Every table of the stage, by name; each carries n_items (and n_checkpoints where rows pool checkpoints)."""
    x, per_item = list(options.metrics), list(options.item_metrics)
    return {
        "points": stats.checkpoint_points(items, x, include_layer0).sort_values(["strategy", "step"],
                                                                                ignore_index=True),
        "fits": stats.checkpoint_table(items, x, "strategy", options.n_boot, options.seed, options.n_perm,
                                       include_layer0=include_layer0),
        "item_layer": stats.item_layer_tests(items, per_item),
        "item_layer_by_model": stats.item_layer_tests(items, per_item, by="model"),
        "logistic": pd.concat([stats.item_logistic(items, m, include_layer0=include_layer0) for m in per_item],
                              ignore_index=True),
        "subjects": stats.subject_tests(items, per_item, include_layer0),
        "within_subject": stats.within_subject_tests(items, per_item, include_layer0),
    }


TITLES = {
    "points": "One point per checkpoint (P1 design): accuracies, GAP (points) and layer-averaged metrics",
    "fits": "GAP ~ layer-averaged metric per training strategy: linear fit, bootstrap CIs over items, permutation p",
    "item_layer": "Per item and layer, pooled over checkpoints: metric vs correct_S (point-biserial) and vs item gap",
    "item_layer_by_model": "Per item and layer, per checkpoint",
    "logistic": "Logistic regression correct_S ~ z(metric) + C(layer), SEs clustered by (checkpoint, item)",
    "subjects": "Per subject and checkpoint: subject-level metric vs subject gap and speech accuracy",
    "within_subject": "Within each subject: metric vs correct_S and item gap",
}


def run_stats(tables: dict[str, str | Path], options: StatsOptions, include_layer0: bool,
              out: dict[str, str | Path]) -> dict:
    """Write `out[name]` (CSV) for every table of `TITLES`, `out["markdown"]` and `out["headline"]` (JSON): the
    paths the rule declares."""
    items = gather(tables)
    results = stat_tables(items, options, include_layer0)
    markdown = [f"# Gap statistics: {items['model'].nunique()} checkpoints, {items['id'].nunique()} items\n"]
    for name, table in results.items():
        write_csv(table, out[name])
        markdown.append(f"## {TITLES[name]}\n\n{to_markdown(table)}\n")
    write_text("\n".join(markdown), out["markdown"])
    head = stats.headline(results["fits"]) | {"n_items": int(items["id"].nunique()),
                                              "n_checkpoints": int(items["model"].nunique()),
                                              "include_layer0": include_layer0}
    write_text(json.dumps(head, indent=1, allow_nan=False), out["headline"])
    log.info("stats of %d checkpoints x %d items written to %s", head["n_checkpoints"], head["n_items"],
             Path(out["headline"]).parent)
    return head
