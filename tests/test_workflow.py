"""End to end: the smoke study through the real Snakefile (corpus, lab, states, metrics), reruns, and bad-input behaviour."""
import json

import pandas as pd
import pytest

from workflow_util import job_stats, local_smoke_study, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return local_smoke_study(tmp_path_factory)


def test_corpus_outputs(study):
    workdir, _ = study
    corpus = workdir / "results" / "corpus" / "lab"
    summary = json.loads((corpus / "summary.json").read_text())
    assert set(summary) == {"train/en-us", "calib/en-us+f3", "test/en-us+f3"}
    assert summary["test/en-us+f3"]["items"] == 8
    df = pd.read_parquet(corpus / "test" / "en-us+f3" / "items.parquet")
    assert len(df) == 8 and (df["status"] == "ok").all()
    for _, row in df.iterrows():
        assert (workdir / row["audio"]).is_file()
        assert len(row["start_ms"]) == len(row["words"]) == len(row["align_start_ms"])
    assert (workdir / "results" / "logs" / "corpus_speech" / "lab" / "test" / "en-us+f3.log").is_file()
    assert (workdir / "results" / "benchmarks" / "corpus_align" / "lab" / "test" / "en-us+f3.tsv").is_file()


def test_lab_and_states_outputs(study):
    workdir, _ = study
    lab = pd.read_csv(workdir / "results" / "lab" / "accuracy.csv")
    assert list(lab["checkpoint"]) == ["lab-frozen@step5", "lab-frozen@step10", "lab-full@step5", "lab-full@step10"]
    assert (lab["n_items"] == 8).all()
    states = pd.read_csv(workdir / "results" / "states" / "accuracy.csv")
    assert sorted(states["model"]) == sorted(lab["checkpoint"]) and (states["n_items"] == 8).all()
    merged = states.merge(lab, left_on="model", right_on="checkpoint")
    assert (merged["text_acc_x"] == merged["text_acc_y"]).all() and (merged["speech_acc_x"] == merged["speech_acc_y"]).all()
    shards = sorted(p.name for p in (workdir / "results" / "states" / "lab-full@step10" / "lab" / "en-us+f3").iterdir())
    assert shards == ["accuracy.csv", "predictions.parquet", "responses.parquet", "shard0.zarr", "shard1.zarr",
                      "skipped.csv"]


def test_metrics_outputs(study):
    workdir, _ = study
    out = workdir / "results" / "metrics" / "lab-full@step10" / "lab" / "en-us+f3"
    summary = json.loads((out / "summary.json").read_text())
    items = pd.read_parquet(out / "items.parquet")
    assert summary["n_items"] == 8 and items["id"].nunique() == 8
    assert items["layer"].nunique() == len(summary["layers"]) and items["cos"].between(-1, 1).all()
    assert items.attrs["modgap"]["options"]["dtw"]["base_layer"] == 1
    assert (workdir / "results" / "logs" / "metrics" / "lab-full@step10" / "lab" / "en-us+f3.log").is_file()


def test_stats_and_interventions_outputs(study):
    workdir, _ = study
    head = json.loads((workdir / "results" / "stats" / "lab" / "en-us+f3" / "headline.json").read_text())
    assert head["n_checkpoints"] == 4 and head["n_items"] == 8 and set(head["groups"]) == {"frozen", "full"}  # P1: per strategy
    out = workdir / "results" / "interventions" / "lab" / "en-us+f3"
    conditions = pd.read_csv(out / "conditions.csv")
    assert conditions["model"].nunique() == 4 and (conditions["n_items"] == 8).all()
    assert {"speech", "text", "calib-input", "calib-output", "redundancy-r8"} <= set(conditions["condition"])
    controls = pd.read_csv(out / "controls.csv")
    assert {"effect", "effect_ci_lo", "random_delta", "even_delta", "other_item_delta"} <= set(controls.columns)
    stats = workdir / "results" / "stats" / "lab" / "en-us+f3"
    findings = pd.read_csv(stats / "findings.csv")
    assert {"claim", "control", "verdict", "n_items", "n_checkpoints"} <= set(findings.columns)
    assert findings["source"].str.startswith("interventions").any() and findings["verdict"].notna().all()
    assert pd.read_csv(stats / "logistic.csv")["cluster_unit"].eq("item").all()
    p1 = pd.read_csv(out / "p1_table.csv")
    assert list(p1.columns) == ["model", "text", "speech", "angle bottom-3", "angle all", "length bottom-3",
                                "length all"] and len(p1) == 4


# accuracy; 14 per voice (lens strata: the lens readout is on by default); CKA per model; 2 items x 2 layers per model
N_FIGURES = 1 + 14 + 4 * 3 + 4 * 4


def test_figures_and_report(study, tmp_path):
    workdir, _ = study
    figures = sorted((workdir / "results" / "figures").rglob("*.png"))
    assert len(figures) == N_FIGURES
    assert all(f.with_suffix(".pdf").is_file() for f in figures)
    report = tmp_path / "report.html"
    snakemake(workdir, "--report", str(report))
    html = report.read_text(errors="replace")
    missing = [f for f in figures if f'"{f.relative_to(workdir)}": {{' not in html]  # each figure is a report result
    assert not missing and html.count('"mime_type": "image/png"') == len(figures)


def test_figures_regenerate_with_plot_jobs_only(study):
    """Deleted figures of three kinds (the accuracy bars, a per-voice figure, one checkpoint's CKA) come back from the
    cached tables through plot jobs alone. A sample, not every figure: each plot job pays a Python start and imports."""
    workdir, _ = study
    figures = workdir / "results" / "figures"
    removed = [figures / "accuracy.png", figures / "lab" / "en-us+f3" / "gap_scatter.png",
               *sorted((figures / "lab" / "en-us+f3" / "cka").glob("*_grid.png"))[:1]]
    assert len(removed) == 3 and all(f.is_file() for f in removed)
    for f in removed:
        f.unlink()
        f.with_suffix(".pdf").unlink()
    jobs = job_stats(snakemake(workdir, "figures").stdout)
    assert jobs and all(rule.startswith("plot_") or rule == "figures" for rule in jobs), jobs
    assert all(f.is_file() and f.with_suffix(".pdf").is_file() for f in removed)
    assert len(list(figures.rglob("*.png"))) == N_FIGURES


def test_plot_style_change_reruns_only_plots(study):
    workdir, config = study
    write_config(workdir, {**config, "plots": {**config.get("plots", {}), "style": {"font.size": 12}}})
    try:
        jobs = planned_jobs(workdir)
    finally:
        write_config(workdir, config)
    assert jobs and all(rule.startswith("plot_") or rule == "all" for rule in jobs), jobs


def test_rerun_does_nothing(study):
    workdir, _ = study
    assert planned_jobs(workdir) == {}


def test_tts_change_reruns_only_what_depends_on_it(study):
    workdir, config = study
    changed = {**config, "tts": {**config["tts"], "rates": {"test": 200}}}
    write_config(workdir, changed)
    try:
        jobs = planned_jobs(workdir)
    finally:
        write_config(workdir, config)
    # the test voice's corpus, scoring and every checkpoint's states; not the items, nor the training split or training
    assert jobs == {
        "corpus_speech": 1, "corpus_align": 1, "corpus_summary": 1, "lab_score": 1,
        "states_dump": 8, "states_tables": 4, "states_accuracy": 1, "states_suites": 1, "metrics": 4,
        "metrics_heatmaps": 4, "lens_strata": 4, "stats": 1, "findings": 1, "interventions_shard": 8,
        "interventions": 1, "plot_accuracy": 1, "plot_metrics": 1, "plot_gap": 1, "plot_cka": 4, "plot_heatmaps": 4,
        "plot_interventions": 1, "plot_redundancy_lens": 1, "plot_base_layers": 1, "plot_lens_strata": 1, "all": 1,
    }


def test_metric_option_change_reruns_metrics_not_states(study):
    workdir, config = study
    write_config(workdir, {**config, "metrics": {"cka": {"tau": 0.9}}})
    try:
        jobs = planned_jobs(workdir)
    finally:
        write_config(workdir, config)
    assert jobs == {"metrics": 4, "lens_strata": 4, "stats": 1, "findings": 1, "plot_metrics": 1, "plot_gap": 1,
                    "plot_cka": 4, "plot_base_layers": 1, "plot_lens_strata": 1, "all": 1}


def test_bad_config_fails_in_one_line_naming_the_key(study, tmp_path):
    _, config = study
    write_config(tmp_path, {**config, "tts": {**config["tts"], "pitchh": 3}})
    proc = snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0
    assert "modgap: config key tts.pitchh: unknown key" in proc.stdout


def test_missing_dataset_file_fails_naming_it(tmp_path):
    write_config(tmp_path, {"datasets": {"mine": {"source": "jsonl", "path": "data/none.jsonl"}}})
    proc = snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0
    assert "config key datasets.mine.path: file not found: data/none.jsonl" in proc.stdout


def test_released_checkpoint_study_plans_no_lab_rule(tmp_path):
    """A folder whose config names only a user's dataset and checkpoint (no lab model): the whole study is planned,
    and no lab rule (which needs the lab dataset) is among its jobs."""
    record = {"id": "q1", "subject": "s", "question": "what is two plus three", "choices": ["five", "six"], "answer": 0}
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    config = {"datasets": {"mine": {"source": "jsonl", "path": "data.jsonl"}},
              "models": {"mine": {"family": "qwen2_audio", "path": str(tmp_path / "checkpoint")}}}
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert jobs["states_dump"] == 1 and jobs["findings"] == 1 and jobs["all"] == 1
    assert jobs["lens_strata"] == 1 and jobs["plot_lens_strata"] == 1  # the lens readout is on by default
    assert jobs["plot_redundancy_lens"] == 1
    write_config(tmp_path, {**config, "states": {"readouts": ["lens", "transcript"]}})
    assert planned_jobs(tmp_path)["transcript_layers"] == 1
    # neither P2 table's analysis nor the attention figures are on by default
    assert {"decision_tables", "plot_attention", "plot_attention_rows", "metrics_attention_rows"}.isdisjoint(jobs)
    decision = {**config, "states": {"readouts": ["lens", "attention"]},
                "interventions": {"kv_merge": {"enabled": True, "layers": [0, 1]}}}
    write_config(tmp_path, decision)
    jobs = planned_jobs(tmp_path)
    assert jobs["decision_tables"] == jobs["plot_attention"] == jobs["plot_attention_rows"] == 1
    assert jobs["metrics_attention_rows"] == 1
    write_config(tmp_path, decision | {"states": {"readouts": ["lens", "attention"], "attention_heatmap_items": 0}})
    jobs = planned_jobs(tmp_path)
    assert "plot_attention_rows" not in jobs and "plot_attention" in jobs
    assert not [rule for rule in jobs if rule.startswith("lab_")]
