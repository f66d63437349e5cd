"""The slurm profile against a real SLURM: a single-node cluster from Debian's slurm-wlm and munge, started by
tests/slurm/cluster.py (skipped, with the precise reason, where it cannot start). The states of one smoke-study
checkpoint go through `--workflow-profile workflow/profiles/slurm` and sbatch, and must equal the local run's.

Scope: the local smoke study (shared with tests/test_workflow.py) builds the corpus and trains the lab model; only
the two shard stores of lab-full@step10's states are redone through SLURM, as two jobs at once. Every SLURM job
pays a full Snakefile parse and imports torch in its script on top of its work, and each
dependent step waits for a status poll, so the whole study through SLURM would take several minutes on two cores.
Set MODGAP_SLURM_TEST=0 to skip it.
"""
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

from modgap.states.store import StoreReader, predictions_table
from slurm.cluster import Unavailable, job_records, start
from workflow_util import REPO, local_smoke_study, snakemake

PROFILE = REPO / "workflow" / "profiles" / "slurm"
STATES = "results/states/lab-full@step10/lab/en-us+f3"
SHARDS = ("shard0.zarr", "shard1.zarr")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("MODGAP_SLURM_TEST") == "0":
        pytest.skip("SLURM test disabled by MODGAP_SLURM_TEST=0")
    try:
        running = start(tmp_path_factory.mktemp("slurm"))
    except Unavailable as reason:
        pytest.skip(f"no single-node SLURM here: {reason}")
    yield running
    running.stop()


def load_profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def test_profile_sets_partition_account_gpus_runtime_and_memory():
    profile = load_profile()
    assert profile["executor"] == "slurm" and profile["jobs"] > 0
    assert {"slurm_partition", "slurm_account", "mem_mb", "runtime"} <= set(profile["default-resources"])
    assert "slurm_partition" in profile["set-resources"]["states_dump"]  # GPU jobs go to a GPU partition


def cluster_arguments(partition: str) -> list[str]:
    """The slurm profile, with what only suits a real cluster replaced on the command line: every partition by the
    test cluster's, no account (no accounting database here), job status from squeue (sacct needs that database)."""
    profile = load_profile()
    defaults = {k: v for k, v in profile["default-resources"].items() if k != "slurm_account"}
    defaults["slurm_partition"] = partition
    per_rule = [
        f"{rule}:{key}={partition if key == 'slurm_partition' else value}"
        for rule, resources in profile["set-resources"].items()
        for key, value in resources.items()
        if key != "gpu_model"  # the test node has no GPU
    ]
    return [
        "--workflow-profile", str(PROFILE), "--jobs", "2",
        "--default-resources", *(f"{k}={v}" for k, v in defaults.items()),
        "--set-resources", *per_rule,
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
    ]


def store_arrays(path) -> tuple[dict, dict]:
    """(group attributes, {array name: values}) of a Zarr store."""
    group = zarr.open_group(path, mode="r")
    return dict(group.attrs), {name: np.asarray(a[...]) for name, a in group.arrays()} | {
        f"{sub}/{name}": np.asarray(a[...]) for sub, g in group.groups() for name, a in g.arrays()
    }


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp")  # Snakemake's marker in directory outputs
def test_states_through_slurm_match_the_local_run(cluster, tmp_path_factory, monkeypatch):
    local, _ = local_smoke_study(tmp_path_factory)
    work = tmp_path_factory.mktemp("slurm_study")
    shutil.copytree(local, work, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("locks", "incomplete", "log", "slurm_logs"))
    for shard in SHARDS:
        shutil.rmtree(work / STATES / shard)
    for key in ("SLURM_CONF", "PATH"):
        monkeypatch.setenv(key, cluster.env[key])

    out = snakemake(work, *cluster_arguments(cluster.partition), *(f"{STATES}/{s}" for s in SHARDS)).stdout

    # every job went through sbatch: slurmctld knows them under this run's id, and the plugin kept their logs
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    jobs = job_records(cluster, name=run_id)
    rules = [re.match(r"rule_(\w+?)_wildcards", j["Comment"]).group(1) for j in jobs]
    assert rules == ["states_dump"] * len(SHARDS), out[-3000:]
    assert all(j["JobState"] == "COMPLETED" and j["Partition"] == cluster.partition for j in jobs)
    assert all("gres/gpu" not in j.get("TRES", "") for j in jobs)  # device: cpu in the smoke config -> gpu=0
    assert len(re.findall(r"has been submitted with SLURM jobid (\d+)", out)) == len(jobs)
    logs = {p.stem for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert logs == {j["JobId"] for j in jobs}

    # ... and wrote exactly what the local run did: hidden states, predictions, option log-likelihoods, manifest
    for shard in SHARDS:
        (attrs_s, arrays_s), (attrs_l, arrays_l) = store_arrays(work / STATES / shard), store_arrays(local / STATES / shard)
        assert attrs_s == attrs_l and arrays_s.keys() == arrays_l.keys() and "S/hidden" in arrays_l
        for name in arrays_l:
            np.testing.assert_array_equal(arrays_s[name], arrays_l[name], err_msg=f"{shard}/{name}")
    pred = pd.concat([predictions_table(StoreReader(work / STATES / s)) for s in SHARDS], ignore_index=True)
    local_pred = pd.read_parquet(local / STATES / "predictions.parquet")
    pd.testing.assert_frame_equal(pred.drop(columns="item"), local_pred)
