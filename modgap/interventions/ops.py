"""Pure tensor algebra of the interventions (no model, no I/O): norm/direction swaps and moment matching.

Every op computes in float32 on row-wise batches [n, d] (a single vector [d] works too) and returns the input dtype.
The formulas are arranged so that an op fed identical arguments is the identity bit for bit (a ratio of two equal
norms is exactly 1, and moment matching is written `x * a + b` with a = 1 and b = 0 for identical statistics); the
interventions' identity tests rely on that.
"""
from __future__ import annotations

import torch


def _norms(x: torch.Tensor) -> torch.Tensor:
    """[..., 1] L2 norm of each row (float32)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def angle_projection(h_s: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """Keep each speech row's norm, take the text row's direction: `||h_s|| * h_t / ||h_t||` (P1).

    h_s, h_t: [n, d] (or broadcastable). A text row of norm zero has no direction: that speech row is returned
    unchanged.
    """
    s, t = h_s.float(), h_t.float()
    ns, nt = _norms(s), _norms(t)
    zero = nt == 0
    out = t * (ns / torch.where(zero, torch.ones_like(nt), nt))
    return torch.where(zero, s, out).to(h_s.dtype)


def length_normalization(h_s: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
    """Keep each speech row's direction, take the text row's norm: `||h_t|| * h_s / ||h_s||` (P1).

    A speech row of norm zero has no direction: it is returned unchanged (zero).
    """
    s, t = h_s.float(), h_t.float()
    ns, nt = _norms(s), _norms(t)
    zero = ns == 0
    out = s * (nt / torch.where(zero, torch.ones_like(ns), ns))
    return torch.where(zero, s, out).to(h_s.dtype)


def moment_calibration(
    x: torch.Tensor, mu_s: torch.Tensor, sd_s: torch.Tensor, mu_t: torch.Tensor, sd_t: torch.Tensor
) -> torch.Tensor:
    """Moment matching of speech rows to text statistics: `(x - mu_s) / sd_s * sd_t + mu_t` (P2).

    x: [n, d]; the statistics are per dimension ([d]) or scalar (0-dim), all four of one form. Computed as
    `x * a + b` with `a = sd_t / sd_s` and `b = mu_t - mu_s * a`. Where sd_s == 0 (a dimension constant over the
    calibration speech) the scale is taken as 1: the dimension is only shifted by `mu_t - mu_s`.
    """
    stats = [torch.as_tensor(v, dtype=torch.float32, device=x.device) for v in (mu_s, sd_s, mu_t, sd_t)]
    shapes = {tuple(v.shape) for v in stats}
    d = x.shape[-1]
    if len(shapes) != 1 or next(iter(shapes)) not in {(), (d,)}:
        raise ValueError(f"moment statistics must all be scalars or all of shape [{d}], got shapes {sorted(shapes)}")
    mu_s, sd_s, mu_t, sd_t = stats
    if (sd_s < 0).any() or (sd_t < 0).any():
        raise ValueError("standard deviations must be >= 0")
    a = torch.where(sd_s == 0, torch.ones_like(sd_s), sd_t / torch.where(sd_s == 0, torch.ones_like(sd_s), sd_s))
    b = mu_t - mu_s * a
    return (x.float() * a + b).to(x.dtype)


OPS = {"angle": angle_projection, "length": length_normalization}
