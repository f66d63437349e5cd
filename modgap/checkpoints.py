"""Model names as the analyses group them: lab checkpoints `lab-<strategy>@step<N>`, any other model on its own.

No heavy imports: the plot and stats drivers use it."""
from __future__ import annotations

import re
from dataclasses import dataclass

ALL = "all"  # the group of every checkpoint together (fits per strategy, and this one)
LAB_MODEL = re.compile(r"^lab-(?P<strategy>.+)@step(?P<step>\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A model as figures group it: lab checkpoints by training strategy and step; any other model is its own group."""

    model: str
    strategy: str
    step: int | None


def parse_model(model: str) -> Checkpoint:
    """`lab-frozen@step50` -> (frozen, 50); any other name -> (name, None)."""
    m = LAB_MODEL.match(model)
    return Checkpoint(model, m["strategy"], int(m["step"])) if m else Checkpoint(model, model, None)
