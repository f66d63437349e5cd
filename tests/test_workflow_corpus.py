"""End to end: the smoke study's corpus through the real Snakefile, reruns, and bad-input behaviour."""
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


def test_rerun_does_nothing(study):
    workdir, _ = study
    assert planned_jobs(workdir) == {}


def test_tts_change_reruns_only_the_corpus_speech_and_after(study):
    workdir, config = study
    changed = {**config, "tts": {**config["tts"], "rates": {"test": 200}}}
    write_config(workdir, changed)
    try:
        jobs = planned_jobs(workdir)
    finally:
        write_config(workdir, config)
    assert jobs == {"corpus_speech": 1, "corpus_align": 1, "corpus_summary": 1, "all": 1}


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
