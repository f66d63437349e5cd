"""Interventions stage drivers: run every condition on one shard of one model (forward passes), then gather every
model's shards into the papers' tables (no forward pass)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from modgap.atomic import write_csv, write_parquet, write_text
from modgap.corpus.table import read_rows, read_shard
from modgap.interventions.conditions import conditions_from_options, run_conditions
from modgap.interventions.options import InterventionsOptions
from modgap.interventions.report import (
    CONTROL_COLUMNS, control_effects, p1_table, p2_calibration_table, paired_ci, redundancy_lens_table,
    redundancy_table, summarize,
)
from modgap.models import load_run
from modgap.options import as_dict
from modgap.plan import ModelRun
from modgap.states.options import StatesOptions
from modgap.tables import to_markdown

log = logging.getLogger("modgap")


def run_shard(run: ModelRun, test_table: str | Path, calib_table: str | Path | None, shard: int,
              states: StatesOptions, options: InterventionsOptions, out_path: str | Path,
              device: str | None = None) -> pd.DataFrame:
    """Re-score one shard of the test items under every configured condition; calibration statistics come from
    the first `options.calib_items` usable items of `calib_table` (the held-out calibration split; without one,
    the calibration conditions are skipped with a warning in the job's log). Other-item partners come from every
    usable item of `test_table`, so a shard of one item has one too."""
    rows, style = read_shard(test_table, shard, states.shard_items, states.max_items)
    if options.calibration and calib_table is None:
        log.warning("%s has no calib split to fit P2's calibration statistics on: calibration skipped", test_table)
        options = dataclasses.replace(options, calibration=())
    calibration = read_rows(calib_table)[: options.calib_items] if options.calibration else None
    adapter = load_run(run, device)
    options.check_layers(run.name, adapter.n_layers)
    table = run_conditions(adapter, rows, style, states.norm, conditions_from_options(options), calibration,
                           batch_items=options.batch_items, controls=options.controls, seed=options.seed,
                           partner_pool=read_rows(test_table))
    table.attrs["modgap"] = {"model": run.name, "shard": shard, "options": as_dict(options),
                             "output_layer": adapter.n_layers - 1,
                             "duplicate_positions": "first selected text token wins"}
    write_parquet(table, out_path)
    return table


def _plot_name(row: pd.Series) -> str:
    """Condition names the figures use: speech, text, calib-input, calib-output, redundancy-r<r>, or the label."""
    if row["condition"] in ("S", "T"):
        return {"S": "speech", "T": "text"}[row["condition"]]
    if row["condition"] == "calibration":
        return f"calib-{row['site']}"
    if row["condition"] == "redundancy":
        return f"redundancy-r{row['r']}"
    return row["label"]


def conditions_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, condition), controls included (column `control`): accuracy (fraction), delta vs its
    baseline with a paired 95% CI (points), exact McNemar p, fixed and broken counts, n_items."""
    frames = []
    for model, table in tables.items():
        summary = summarize(table)
        summary.insert(0, "model", model)
        ci = [paired_ci(r.fixed, r.broken, r.n_items) for r in summary.itertuples()]
        summary["ci_lo"], summary["ci_hi"] = [c[0] for c in ci], [c[1] for c in ci]
        summary["name"] = summary.apply(_plot_name, axis=1)
        frames.append(summary.rename(columns={"p_mcnemar": "mcnemar_p"}))
    out = pd.concat(frames, ignore_index=True)
    return out.rename(columns={"condition": "kind", "name": "condition"})


def controls_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """`control_effects` of every model, one row per (model, edit condition)."""
    return pd.concat([control_effects(t).assign(model=m) for m, t in tables.items()], ignore_index=True
                     )[["model", *CONTROL_COLUMNS]]


TABLES = ("conditions", "controls", "p1_table", "calibration", "redundancy", "redundancy_lens")


def gather(shards: dict[str, list[str]], out: dict[str, str | Path], k: int, stats_mode: str
           ) -> dict[str, pd.DataFrame]:
    """Concatenate each model's shard tables and write `out["items"]` (Parquet), one CSV per name of `TABLES`
    (`out[name]`) and `out["markdown"]`: the paths the rule declares."""
    tables = {m: pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True) for m, paths in shards.items()}
    if not tables:
        raise ValueError("interventions: no model to gather (the models list is empty)")
    results = {
        "conditions": conditions_table(tables),
        "controls": controls_table(tables),
        "p1_table": p1_table(tables, layer=0, k=k).reset_index(),
        "calibration": p2_calibration_table(tables, stats_mode).reset_index(),
        "redundancy": redundancy_table(tables),
        "redundancy_lens": redundancy_lens_table(tables),
    }
    write_parquet(pd.concat([t.assign(model=m) for m, t in tables.items()], ignore_index=True), out["items"])
    n_items = max(t["id"].nunique() for t in tables.values())
    markdown = [f"# Interventions: {len(tables)} models, {n_items} items each\n"]
    for name, table in results.items():
        write_csv(table, out[name])
        markdown.append(f"## {name}\n\n{to_markdown(table)}\n")
    write_text("\n".join(markdown), out["markdown"])
    log.info("interventions of %d models gathered in %s", len(tables), Path(out["markdown"]).parent)
    return results
