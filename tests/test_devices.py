"""GPU assignment for local jobs (modgap.devices) with a fake device count: the per-job lock, and Snakemake's
`gpu` resource limit of the local profile."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from modgap import devices
from modgap.devices import claim_gpu, job_device, resolve_device
from workflow_util import REPO, SNAKEMAKE

# One job: (from wall time `at`, if given) claim a GPU, hold it `hold` seconds, append {gpu, start, end, pid} to
# `out` (JSON lines).
HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from modgap.devices import claim_gpu
    out, hold = sys.argv[1], float(sys.argv[2])
    if len(sys.argv) > 3:
        time.sleep(max(0.0, float(sys.argv[3]) - time.time()))
    with claim_gpu(poll_s=0.05) as k:
        start = time.time()
        time.sleep(hold)
        end = time.time()
    with open(out, "a") as f:
        f.write(json.dumps({"gpu": k, "start": start, "end": end, "pid": os.getpid()}) + "\\n")
""")


@pytest.fixture
def locks(tmp_path, monkeypatch):
    """A private lock folder and no inherited SLURM or CUDA settings."""
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "locks"))
    for var in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", devices.FAKE_ENV):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "locks"


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def max_overlap(records):
    """Most GPU holders at one instant, and whether any two overlapping holders shared a GPU."""
    events = sorted([(r["start"], 1, r) for r in records] + [(r["end"], -1, r) for r in records],
                    key=lambda e: (e[0], e[1]))
    held, most, clash = {}, 0, False
    for _, step, r in events:
        if step > 0:
            clash |= r["gpu"] in held.values()
            held[r["pid"]] = r["gpu"]
            most = max(most, len(held))
        else:
            held.pop(r["pid"])
    return most, clash


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_no_gpu_means_no_lock(locks, monkeypatch):
    monkeypatch.setenv(devices.FAKE_ENV, "0")
    with claim_gpu() as k, job_device("cuda") as dev:
        assert k is None and dev == "cuda"
    with job_device("cpu") as dev:
        assert dev == "cpu"
    assert not locks.exists()


def test_claims_distinct_gpus_and_waits_when_all_are_held(locks, monkeypatch):
    monkeypatch.setenv(devices.FAKE_ENV, "2")
    got = []
    with job_device("cuda") as a, job_device("cuda") as b:
        assert (a, b) == ("cuda:0", "cuda:1")
        assert (locks / "gpu0.lock").read_text().split()[0] == str(os.getpid())
        waiter = threading.Thread(target=lambda: got.append(_claim_once()))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and not got  # both GPUs held: the third claim waits
    waiter.join(5)
    assert got == [0]  # released: the waiting claim took the first free GPU


def _claim_once():
    with claim_gpu(poll_s=0.05) as k:
        return k


def test_processes_share_two_gpus(locks, tmp_path):
    """Four jobs, two (fake) GPUs, no other limit: never more than two hold a GPU, never the same one."""
    out = tmp_path / "held.jsonl"
    env = {**os.environ, devices.FAKE_ENV: "2"}
    at = str(time.time() + 1.5)  # all four claim at once, whatever their start-up time
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "0.6", at], env=env) for _ in range(4)]
    assert [p.wait(30) for p in procs] == [0] * 4
    records = read_records(out)
    assert sorted(r["gpu"] for r in records) == [0, 0, 1, 1]
    assert max_overlap(records) == (2, False)


def test_a_killed_job_releases_its_gpu(locks, tmp_path):
    env = {**os.environ, devices.FAKE_ENV: "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "x"), "60"], env=env)
    deadline = time.monotonic() + 20
    while not (locks / "gpu0.lock").exists() or not (locks / "gpu0.lock").read_text().strip():
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    start = time.monotonic()
    assert _claim_with_fake(1) == 0 and time.monotonic() - start < 2


def _claim_with_fake(n):
    with claim_gpu(n_devices=n, poll_s=0.05) as k:
        return k


def test_lock_files_name_the_physical_gpu(locks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with claim_gpu(n_devices=2) as a, claim_gpu(n_devices=2) as b:
        assert (a, b) == (0, 1)  # indices in this process ...
    assert sorted(p.name for p in locks.iterdir()) == ["gpu2.lock", "gpu3.lock"]  # ... locks per physical GPU


def test_slurm_jobs_do_not_wait_on_each_other(locks, monkeypatch):
    """Each SLURM job gets its own GPU from SLURM: its locks live in its own folder, so it never waits."""
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    with claim_gpu(n_devices=1) as a:
        monkeypatch.setenv("SLURM_JOB_ID", "102")
        with claim_gpu(n_devices=1, poll_s=0.05) as b:
            assert (a, b) == (0, 0)
    assert sorted(p.name for p in locks.iterdir()) == ["slurm-101", "slurm-102"]


GPU_SNAKEFILE = """
rule all:
    input: expand("done/{{i}}", i=range(4))

rule gpu_job:
    output: "done/{{i}}"
    resources: gpu=1
    shell: "{python} {holder} {out} 1.0 && touch {{output}}"
"""


@pytest.mark.parametrize(
    "fake, args, most",
    [
        ("4", ["--cores", "4", "--resources", "gpu=2"], 2),  # Snakemake's limit: 2 GPU jobs at once
        ("4", ["--workflow-profile", str(REPO / "workflow" / "profiles" / "local"), "--cores", "4"], 1),
    ],
    ids=["resources-gpu-2", "local-profile-default"],
)
def test_snakemake_gpu_jobs_get_distinct_gpus(locks, tmp_path, fake, args, most):
    """Four 1 s GPU jobs on 4 cores: Snakemake's `gpu` limit caps how many hold a GPU at once (the fake count
    leaves the lock free), and overlapping jobs never share a GPU."""
    out, holder = tmp_path / "held.jsonl", tmp_path / "holder.py"
    holder.write_text(HOLDER)
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE.format(python=sys.executable, holder=holder, out=out))
    env = {**os.environ, devices.FAKE_ENV: fake}
    proc = subprocess.run([str(SNAKEMAKE), "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path), *args],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_records(out)
    assert len(records) == 4
    overlap, clash = max_overlap(records)
    assert 1 <= overlap <= most and not clash
