"""Streaming per-dimension moments of hidden states, and the standardized L2 distance built on them (P2)."""
from __future__ import annotations

import torch
from torch import Tensor

from .geometry import upcast


class MomentAccumulator:
    """Streaming mean and sample standard deviation (n - 1 denominator) of row vectors, per dimension, in float64,
    batch by batch with Chan et al.'s parallel merge (exact up to rounding, stable for large means).

    `shape` is the shape of one statistic and a batch has its items along dim -2: `MomentAccumulator(d)` takes
    `[n, d]`, `MomentAccumulator((L, d))` takes `[L, n, d]` (every layer at once). `.mean`, `.std` have `shape`;
    `.scalar_mean`, `.scalar_std` pool the last dim (all n * d entries), shape `shape[:-1]`. All are nan until
    there are enough items (1 for means, 2 for standard deviations). Inputs are moved to `device`.
    """

    def __init__(self, shape: int | tuple[int, ...], device: torch.device | str | None = None) -> None:
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.n = 0
        self._mean = torch.full(self.shape, torch.nan, dtype=torch.float64, device=device)
        self._m2 = torch.full_like(self._mean, torch.nan)  # sum of squared deviations from the mean

    def update(self, x: Tensor) -> None:
        """Add a batch `[*shape[:-1], b, d]`."""
        if x.ndim != len(self.shape) + 1 or x.shape[:-2] + x.shape[-1:] != self.shape:
            raise ValueError(f"expected a batch [*{self.shape[:-1]}, b, {self.shape[-1]}], got {tuple(x.shape)}")
        b = x.shape[-2]
        if b == 0:
            return
        x = x.to(self._mean.device, torch.float64)
        mean = x.mean(-2)
        m2 = (x - mean.unsqueeze(-2)).square().sum(-2)
        if self.n == 0:
            self._mean, self._m2 = mean, m2
        else:
            delta, n = mean - self._mean, self.n + b
            self._mean += delta * (b / n)
            self._m2 += m2 + delta.square() * (self.n * b / n)
        self.n += b

    @property
    def mean(self) -> Tensor:
        return self._mean

    @property
    def std(self) -> Tensor:
        return (self._m2 / (self.n - 1)).sqrt()

    @property
    def scalar_mean(self) -> Tensor:
        return self._mean.mean(-1)

    @property
    def scalar_std(self) -> Tensor:
        m2 = self._m2.sum(-1) + self.n * (self._mean - self.scalar_mean[..., None]).square().sum(-1)
        return (m2 / (self.n * self.shape[-1] - 1)).sqrt()


def standardized_l2(xs: Tensor, ys: Tensor, std: Tensor) -> Tensor:
    """Mean over aligned pairs of the L2 distance between z-scored vectors, `[L]`, for xs, ys `[L, n, d]` (speech,
    text) and std `[L, d]`, the per-dimension standard deviation pooled over both conditions.

    With one pooled mean for both conditions the mean cancels, (x - mu)/std - (y - mu)/std = (x - y)/std, so it is
    not taken. Dimensions with std == 0 (constant over the pool) are skipped. In float32 at least.
    """
    if xs.shape != ys.shape or xs.ndim != 3 or std.shape != (xs.shape[0], xs.shape[2]):
        raise ValueError(f"expected xs, ys [L, n, d] and std [L, d], got {tuple(xs.shape)}, {tuple(ys.shape)} "
                         f"and {tuple(std.shape)}")
    dtype = torch.promote_types(upcast(xs).dtype, upcast(ys).dtype)
    std = std.to(xs.device, dtype)
    inv = torch.where(std > 0, std.reciprocal(), 0)
    return torch.linalg.vector_norm((xs.to(dtype) - ys.to(dtype)) * inv[:, None], dim=-1).mean(-1)
