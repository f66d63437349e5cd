"""Run the real Snakefile in a scratch working directory, and read Snakemake's own job summary."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`snakemake -s REPO/Snakefile -d workdir ...`; returns the completed process (stdout+stderr merged)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count that a dry run would execute (empty when nothing is to be done)."""
    return job_stats(snakemake(workdir, "--dry-run", *args).stdout)


def job_stats(out: str) -> dict[str, int]:
    """Rule -> job count from the "Job stats" table Snakemake prints before it runs (empty: nothing to do)."""
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].strip().split("\n\n", 1)[0]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M))
    jobs.pop("total", None)
    return {rule: int(n) for rule, n in jobs.items()}


_RUN: dict[str, tuple[Path, dict]] = {}


def local_smoke_study(tmp_path_factory) -> tuple[Path, dict]:
    """(working directory, config) of the smoke study after a local `snakemake --cores 2` of all its targets, run
    once per test session: tests/test_workflow.py checks it, tests/test_slurm.py compares a SLURM run against it."""
    if "study" not in _RUN:
        workdir = tmp_path_factory.mktemp("study")
        config = yaml.safe_load((REPO / "tests" / "data" / "smoke.yaml").read_text())
        write_config(workdir, config)
        snakemake(workdir)
        _RUN["study"] = (workdir, config)
    return _RUN["study"]
