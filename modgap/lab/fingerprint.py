"""Names and fingerprints of lab checkpoints: light (no torch), so the Snakefile can plan without loading models."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from modgap.lab.recipe import Recipe


def checkpoint_name(strategy: str, step: int) -> str:
    """The name later stages use for a checkpoint, e.g. `lab-frozen@step400`."""
    return f"lab-{strategy}@step{step}"


def fingerprint(recipe: Recipe, data_spec: dict) -> str:
    """A stable digest of the recipe and of everything that shapes the training data (world seed, voices, ...)."""
    blob = json.dumps({"recipe": recipe.hash(), "data": data_spec}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def shipped_fingerprint(shipped: str | Path) -> str | None:
    """The fingerprint recorded with shipped checkpoints, or None when there are none."""
    meta = Path(shipped) / "recipe.json"
    return json.loads(meta.read_text())["fingerprint"] if meta.is_file() else None
