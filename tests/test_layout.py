"""The package's structural rules, checked on its source: one place registers hooks, one place runs prompt
batches, every stage has a driver named stage.py."""
from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "modgap"
STAGES = ("corpus", "lab", "states", "metrics", "stats", "interventions", "plots")


def calls(pattern: str) -> set[str]:
    """Package modules (relative paths) whose source matches `pattern`."""
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(pattern, p.read_text())}


def test_only_models_hooks_registers_forward_hooks():
    assert calls(r"register_forward(_pre)?_hook\(") == {"models/hooks.py"}


def test_only_the_spine_runs_prompt_batches():
    # models/base.py defines prefill_batch (and its one-prompt wrapper `prefill` calls it)
    assert calls(r"\.prefill_batch\(") == {"states/spine.py", "models/base.py"}


def test_every_stage_is_a_package_with_a_stage_driver():
    assert all((PACKAGE / stage / "stage.py").is_file() for stage in STAGES)
