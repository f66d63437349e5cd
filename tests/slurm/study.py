"""The smoke study (tests/data/smoke.yaml) run locally once per test session, for every test that needs it.

The run is cached in this module, so test modules that each wrap `local_smoke_study` in a fixture of their own
still share one run: tests/test_workflow.py checks it, tests/test_slurm.py compares a SLURM run against it.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from workflow_util import REPO, snakemake, write_config

_RUN: dict[str, tuple[Path, dict]] = {}


def local_smoke_study(tmp_path_factory) -> tuple[Path, dict]:
    """(working directory, config) of the smoke study after a local `snakemake --cores 2` of all its targets."""
    if "study" not in _RUN:
        workdir = tmp_path_factory.mktemp("study")
        config = yaml.safe_load((REPO / "tests" / "data" / "smoke.yaml").read_text())
        write_config(workdir, config)
        snakemake(workdir)
        _RUN["study"] = (workdir, config)
    return _RUN["study"]
