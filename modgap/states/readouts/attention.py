"""Attention dispersion of the decision position over the question span (P2 Table 2, Fig. 4).

Per block and head, the decision position's (the prompt's last) attention weights over the span positions
(`Inputs.span`), renormalised over the span (METHODS' default; the mass the span gets out of the whole prompt is not
kept), are summarised by
- Cov_0.90: the fewest span positions whose largest weights hold 90% of the span's mass, also as a fraction of the
  span length n (speech spans are longer);
- the maximum weight;
- the normalised entropy -sum a log a / log n (NaN for a one-position span).
Each summary is the mean over heads of the per-head values. Index l of a field is decoder block l's self-attention
(the block whose output is hook point l); index 0, the input embeddings, has no attention and is NaN.
Control: a uniform row over the span gives Cov = ceil(0.9 n), max 1/n and entropy 1; `attn_span_len` stores n so
the metrics and plots can put that baseline beside each item.
For the few heatmap items (`heatmap_ids`) the ragged field `attn_rows` keeps the rows themselves: per span position
[L+1, heads] (an item has [n, L+1, heads]), the same span-renormalised weights the summaries are taken of, index l
block l and index 0 NaN as above.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from modgap.models.base import SpeechLM
from modgap.states.readouts import Readout, Seen, register

COVERAGE = 0.90  # P2's Cov_p
ROUNDING = 1e-9  # float64 cumulative sums of a mass that reaches p exactly, e.g. 9 of 10 uniform weights
FIELDS = {"attn_cov90": "cov", "attn_cov90_frac": "cov_frac", "attn_max": "max", "attn_entropy": "entropy"}


def dispersion(weights: torch.Tensor, p: float = COVERAGE) -> dict[str, torch.Tensor]:
    """Span attention weights [..., n] (any non-negative mass; renormalised over the last dim) -> per row [...] the
    coverage count `cov` (fewest largest weights holding `p` of the mass, up to float64 rounding), `cov_frac` = cov / n, `max` and
    normalised `entropy`."""
    n = weights.shape[-1]
    a = weights.double() / weights.double().sum(-1, keepdim=True)
    mass = a.sort(-1, descending=True).values.cumsum(-1)
    cov = ((mass < p - ROUNDING).sum(-1) + 1).clamp(max=n).double()
    entropy = -torch.xlogy(a, a).sum(-1) / math.log(n) if n > 1 else torch.full(a.shape[:-1], math.nan)
    return {"cov": cov, "cov_frac": cov / n, "max": a.max(-1).values, "entropy": entropy}


def uniform_dispersion(n: np.ndarray, p: float = COVERAGE) -> dict[str, np.ndarray]:
    """The control: `dispersion` of a uniform row over spans of n positions ([...] -> each summary [...]), in
    closed form: cov = ceil(p n), cov_frac = cov / n, max = 1 / n, entropy = 1 (NaN for n = 1)."""
    n = np.asarray(n, float)
    cov = np.ceil(p * n - ROUNDING)
    return {"cov": cov, "cov_frac": cov / n, "max": 1 / n, "entropy": np.where(n > 1, 1.0, np.nan)}


def span_dispersion(rows: torch.Tensor, span: torch.Tensor) -> dict[str, torch.Tensor]:
    """Decision rows [L, heads, T] of one prompt and its span [n] -> each summary's head mean [L] (float64)."""
    return {k: v.mean(-1) for k, v in dispersion(rows[:, :, span.to(rows.device)]).items()}


def span_rows(rows: torch.Tensor, span: torch.Tensor) -> np.ndarray:
    """Decision rows [L, heads, T] of one prompt and its span [n] -> [n, L+1, heads] float32 weights renormalised
    over the span, per block and head (block 0, the embeddings, NaN)."""
    a = rows[:, :, span.to(rows.device)].double()
    a = (a / a.sum(-1, keepdim=True)).float().permute(2, 0, 1).cpu().numpy()  # [n, L, heads]
    return np.concatenate([np.full((a.shape[0], 1, a.shape[2]), np.nan, np.float32), a], axis=1)


@register
class AttentionDispersion(Readout):
    name = "attention"
    needs = ("attention_rows",)

    def fields(self, adapter: SpeechLM) -> dict[str, tuple[int, ...]]:
        return {field: (adapter.n_layers + 1,) for field in FIELDS} | {"attn_span_len": ()}

    def ragged_fields(self, adapter: SpeechLM) -> dict[str, tuple[int, ...]]:
        return {"attn_rows": (adapter.n_layers + 1, adapter.model.config.get_text_config().num_attention_heads)}

    def __call__(self, seen: Seen) -> dict[str, np.ndarray | list[np.ndarray]]:
        summaries = [span_dispersion(rows, x.span) for rows, x in zip(seen.attention, seen.inputs)]
        out: dict[str, np.ndarray | list[np.ndarray]] = {
            field: np.stack([np.concatenate([[np.nan], s[key].cpu().numpy()]) for s in summaries])
            for field, key in FIELDS.items()}
        out["attn_span_len"] = np.array([len(x.span) for x in seen.inputs], np.float32)
        row_shape = self.ragged_fields(seen.adapter)["attn_rows"]
        out["attn_rows"] = [span_rows(rows, x.span) if it.id in self.heatmap_ids
                            else np.empty((0, *row_shape), np.float32)
                            for rows, x, it in zip(seen.attention, seen.inputs, seen.items)]
        return out
