"""End to end: the smoke study through the real Snakefile (corpus, lab, states), reruns, and bad-input behaviour."""
import json

import pandas as pd
import pytest
import yaml

from workflow_util import REPO, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    config = yaml.safe_load((REPO / "tests" / "data" / "smoke.yaml").read_text())
    write_config(workdir, config)
    snakemake(workdir)
    return workdir, config


def test_corpus_outputs(study):
    workdir, _ = study
    corpus = workdir / "results" / "corpus" / "lab"
    summary = json.loads((corpus / "summary.json").read_text())
    assert set(summary) == {"train/en-us", "test/en-us+f3"}
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
    assert shards == ["accuracy.csv", "predictions.parquet", "shard0.zarr", "shard1.zarr"]


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
        "states_dump": 8, "states_tables": 4, "states_accuracy": 1, "all": 1,
    }


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
