"""Stats stage driver: gather every checkpoint's metrics table of one (dataset, voice) (and the lab stage's accuracy
table when there are lab checkpoints), run `modgap.stats.analysis`, and write CSV tables, one Markdown file with all
of them, and a JSON of the headline numbers."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from modgap.stats import analysis as stats
from modgap.stats import decision_tables, findings
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


def stat_tables(items: pd.DataFrame, options: StatsOptions, include_layer0: bool,
                lab: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every table of the stage, by name; each carries n_items (and n_checkpoints where rows pool checkpoints).
    lab: the lab stage's accuracy table (the base LM's text accuracy), None when no model is a lab checkpoint."""
    x, per_item = list(options.metrics), list(options.item_metrics)
    points = stats.checkpoint_points(items, x, include_layer0).sort_values(["strategy", "step"], ignore_index=True)
    logit = {"include_layer0": include_layer0, "cluster": options.cluster,
             "checkpoint_effects": options.checkpoint_effects, "subject_effects": options.subject_effects}
    return {
        "points": points,
        "fits": stats.checkpoint_table(items, x, "strategy", options.n_boot, options.seed, options.n_perm,
                                       include_layer0=include_layer0, pooled=options.pool_strategies),
        "decomposition": stats.decomposition(points, lab),
        "item_layer": stats.item_layer_tests(items, per_item),
        "item_layer_by_model": stats.item_layer_tests(items, per_item, by="model"),
        "logistic": pd.concat([stats.item_logistic(items, m, **logit) for m in per_item], ignore_index=True),
        "subjects": stats.subject_tests(items, per_item, include_layer0),
        "within_subject": stats.within_subject_tests(items, per_item, include_layer0),
    }


TITLES = {
    "points": "One point per checkpoint (P1 design): accuracies, GAP (points) and layer-averaged metrics",
    "fits": "GAP ~ layer-averaged metric per training strategy{pooled}: linear fit, *_lo/*_hi bootstrap CIs over "
            "items, R² interval over checkpoints where n >= {min_boot} (r2_ci_source), permutation p with its floor "
            "(the least p attainable with n checkpoints)",
    "decomposition": "P1's decomposition per checkpoint (points): base LM text accuracy, text and speech accuracy, "
                     "text_loss = base - text, gap = text - speech",
    "item_layer": "Per item and layer, pooled over checkpoints: metric vs correct_S (point-biserial) and vs item gap",
    "item_layer_by_model": "Per item and layer, per checkpoint",
    "logistic": "Logistic regression correct_S ~ z(metric) + C(layer){effects}, SEs clustered by {cluster}",
    "subjects": "Per subject and checkpoint: subject-level metric vs subject gap and speech accuracy",
    "within_subject": "Within each subject: metric vs correct_S and item gap",
}


def titles(options: StatsOptions) -> dict[str, str]:
    """TITLES with the settings they name: pooling of the fits, fixed effects and cluster unit of the logits."""
    effects = [name for name, on in (("checkpoint", options.checkpoint_effects), ("subject", options.subject_effects))
               if on]
    settings = {"pooled": " and pooled" if options.pool_strategies else "", "min_boot": stats.MIN_BOOT_POINTS,
                "effects": "".join(f" + C({e})" for e in effects), "cluster": options.cluster}
    return {name: title.format_map(settings) for name, title in TITLES.items()}


def float_formats(table: pd.DataFrame) -> list[str]:
    """Per column of `table`, the Markdown number format: 3 significant digits for p-values, q-values and permutation
    floors (fixed decimals would print a floor of 2/8! or any small p as 0.000), 3 decimals otherwise."""
    return [".3g" if c in ("p", "perm_floor") or c.endswith(("_p", "_q")) else ".3f" for c in table]


def run_stats(tables: dict[str, str | Path], options: StatsOptions, include_layer0: bool,
              out: dict[str, str | Path], lab_accuracy: str | Path | None = None) -> dict:
    """Write `out[name]` (CSV) for every table of `TITLES`, `out["markdown"]` and `out["headline"]` (JSON): the
    paths the rule declares. lab_accuracy: the lab stage's accuracy.csv, given when some model is a lab
    checkpoint."""
    items = gather(tables)
    lab = None if lab_accuracy is None else pd.read_csv(lab_accuracy)
    results = stat_tables(items, options, include_layer0, lab)
    markdown = [f"# Gap statistics: {items['model'].nunique()} checkpoints, {items['id'].nunique()} items\n"]
    for name, title in titles(options).items():
        write_csv(results[name], out[name])
        markdown.append(f"## {title}\n\n{to_markdown(results[name], float_formats(results[name]))}\n")
    write_text("\n".join(markdown), out["markdown"])
    head = stats.headline(results["fits"]) | {"n_items": int(items["id"].nunique()),
                                              "n_checkpoints": int(items["model"].nunique()),
                                              "include_layer0": include_layer0}
    write_text(json.dumps(head, indent=1, allow_nan=False), out["headline"])
    log.info("stats of %d checkpoints x %d items written to %s", head["n_checkpoints"], head["n_items"],
             Path(out["headline"]).parent)
    return head


def run_findings(metrics: dict[str, dict[str, str | Path]], fits: str | Path, logistic: str | Path,
                 interventions: dict[str, str | Path] | None, n_boot: int, seed: int, include_layer0: bool,
                 out: dict[str, str | Path]) -> pd.DataFrame:
    """Write the findings table (`out["csv"]`, `out["markdown"]`) from the stage tables: per model its metrics
    outputs (`metrics[model]` with keys items, cka, readouts, summary, and lens_strata, transcript, probes,
    base_layers when the study made them), the stats fits and logistic tables, and the
    interventions' controls and conditions tables when the study ran them."""
    items = pd.concat([pd.read_parquet(m["items"]).assign(model=name) for name, m in metrics.items()],
                      ignore_index=True)
    rows = findings.gap_findings(items, n_boot, seed)
    rows += findings.path_findings(items, n_boot, seed, first_layer=0 if include_layer0 else 1)
    rows += findings.cka_findings({n: pd.read_parquet(m["cka"]) for n, m in metrics.items()},
                                  {n: pd.read_csv(m["readouts"]) for n, m in metrics.items()},
                                  {n: json.loads(Path(m["summary"]).read_text()) for n, m in metrics.items()})
    optional = {key: {n: pd.read_csv(m[key]) for n, m in metrics.items() if key in m}
                for key in ("lens_strata", "transcript", "probes", "base_layers")}
    if "attn_entropy_S" in items:
        rows += findings.attention_findings(items, n_boot, seed)
    rows += findings.lens_strata_findings(items, optional["lens_strata"], n_boot, seed)
    rows += findings.transcript_findings(items, optional["transcript"], n_boot, seed)
    rows += findings.synchrony_findings(items, n_boot, seed)
    rows += findings.probe_findings(optional["probes"])
    rows += findings.base_layer_findings(optional["base_layers"])
    rows += findings.fit_findings(pd.read_csv(fits))
    rows += findings.logistic_findings(pd.read_csv(logistic))
    if interventions is not None:
        rows += findings.edit_findings(pd.read_csv(interventions["controls"]))
        rows += findings.condition_findings(pd.read_csv(interventions["conditions"]))
    table = findings.findings_table(rows)
    write_csv(table, out["csv"])
    write_text(f"# Findings, each next to its control\n\n{to_markdown(table)}\n", out["markdown"])
    log.info("%d findings written to %s", len(table), out["csv"])
    return table


def run_decision_tables(tables: dict[str, str | Path], interventions: dict[str, str | Path] | None,
                        out: dict[str, str | Path]) -> None:
    """Write P2's Table 2 and Table 5 types (`modgap.stats.decision_tables`): `out["attention"]` when the metrics
    items carry the attention readout, `out["kv_merge"]` from the interventions' controls and conditions when given
    (each CSV), and both in `out["markdown"]`."""
    items = gather(tables)
    markdown = [f"# Decision dynamics: {items['model'].nunique()} checkpoints, {items['id'].nunique()} items\n"]
    if "attention" in out:
        attention = decision_tables.attention_table(items)
        write_csv(attention, out["attention"])
        markdown.append(f"## Attention dispersion of the decision position (P2 Table 2 type)\n\n{to_markdown(attention)}\n")
    if "kv_merge" in out:
        merges = decision_tables.kv_merge_table(pd.read_csv(interventions["controls"]),
                                                pd.read_csv(interventions["conditions"]))
        write_csv(merges, out["kv_merge"])
        markdown.append(f"## KV token merging (P2 Table 5 type)\n\n{to_markdown(merges)}\n")
    write_text("\n".join(markdown), out["markdown"])
