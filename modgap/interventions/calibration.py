"""Moment statistics for P2's statistical calibration, fitted on a held-out calibration split.

Statistics are recorded at the hook point of the calibrated layer (`modgap.models.hooks`), so they are in
exactly the space that is edited: layer 0 the input embeddings (S: the adapter output scattered in), "output" the
last layer whose edit can reach the answer, L - 1 (see `runner.resolve_layer`); both equal the corresponding
`output_hidden_states`. Moments stream through `modgap.metrics.moments.MomentAccumulator` in float64; standard
deviations are sample ones (n - 1), per dimension or pooled over all dimensions (scalar).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from modgap.metrics.moments import MomentAccumulator

STATS_MODES = ("per_dim", "scalar")


@dataclass(frozen=True)
class MomentStats:
    """Moments of n span positions of one condition at one layer (float64): per-dimension mean and std [d], and
    the scalar mean and std over all n * d values (0-dim)."""

    mean: torch.Tensor
    std: torch.Tensor
    scalar_mean: torch.Tensor
    scalar_std: torch.Tensor
    n: int

    @classmethod
    def of(cls, acc: MomentAccumulator, index: int = 0) -> MomentStats:
        """Statistics `index` (a layer) of an accumulator of shape (layers, d); ValueError with fewer than 2 rows."""
        if acc.n < 2:
            raise ValueError(f"moment statistics need at least 2 span positions, got {acc.n}")
        return cls(acc.mean[index].clone(), acc.std[index].clone(), acc.scalar_mean[index].clone(),
                   acc.scalar_std[index].clone(), acc.n)

    def moments(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sd) in float32: per dimension [d], or scalar (0-dim; over all values of all positions)."""
        if mode == "per_dim":
            return self.mean.float(), self.std.float()
        if mode == "scalar":
            return self.scalar_mean.float(), self.scalar_std.float()
        raise ValueError(f"unknown stats_mode {mode!r} (known: {', '.join(STATS_MODES)})")


@dataclass(frozen=True)
class CalibrationStats:
    """Speech and text span statistics at `layer`, from the calibration items `item_ids`."""

    layer: int
    speech: MomentStats
    text: MomentStats
    item_ids: tuple[str, ...]

    def params(self, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu_s, sd_s, mu_t, sd_t) for `moment_calibration` under `mode` ("per_dim" | "scalar")."""
        return (*self.speech.moments(mode), *self.text.moments(mode))


def check_held_out(calibration_ids: list[str], evaluated_ids: list[str]) -> None:
    """Raise ValueError naming the overlap if any calibration item is also evaluated."""
    overlap = sorted(set(calibration_ids) & set(evaluated_ids))
    if overlap:
        shown = ", ".join(overlap[:10]) + (f" (and {len(overlap) - 10} more)" if len(overlap) > 10 else "")
        raise ValueError(f"calibration items must never be evaluated; {len(overlap)} item(s) are in both: {shown}")
    if not calibration_ids:
        raise ValueError("calibration needs at least one calibration item")
