"""Control edit sites for P1's interventions (METHODS.md, "Controls"): the same item, the same number m of edits,
but at random or evenly spaced speech positions, or with another item's text vectors at the path positions. The
effect of interest is path minus random.

An edit condition is a pair of index tensors into the spans (`runner.select_edits`): speech positions i `[m]` and
text targets j `[m]`, position i[k] receiving op(h^S[i[k]], h^T[j[k]]). Every function here is pure and seeded
through an explicit `torch.Generator`; the result plugs into `hooks.RowEdit` as the runner's path edits do.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from modgap.metrics.baselines import derangement, proportional_path

CONTROLS = ("path", "random", "even")


def random_positions(i: Tensor, n_speech: int, generator: torch.Generator) -> Tensor:
    """m = len(i) distinct speech positions drawn uniformly without replacement from 0..Ts-1 (path positions not
    excluded), in ascending order so that, like a monotone path, later text targets j get later positions;
    `[m]` long. Deterministic given the generator's state."""
    m = len(i)
    if m > n_speech:
        raise ValueError(f"{m} distinct positions cannot be drawn from a span of {n_speech}")
    return torch.randperm(n_speech, generator=generator)[:m].sort().values


def even_positions(m: int, n_speech: int) -> Tensor:
    """m evenly spaced speech positions, the centres of m equal slices of the span (`proportional_path(m, Ts)`:
    `floor((k + 1/2) Ts / m)`), ascending and distinct for m <= Ts; `[m]` long."""
    if m > n_speech:
        raise ValueError(f"{m} distinct positions cannot be placed in a span of {n_speech}")
    return proportional_path(m, n_speech) if m else torch.zeros(0, dtype=torch.long)


def control_sites(control: str, i: Tensor, j: Tensor, n_speech: int, generator: torch.Generator
                  ) -> tuple[Tensor, Tensor]:
    """(positions, targets) of one item's edit under `control`: "path" (i, j) as selected, "random"
    (`random_positions`, j) or "even" (`even_positions`, j)."""
    if control == "path":
        return i, j
    if control == "random":
        return random_positions(i, n_speech, generator), j
    if control == "even":
        return even_positions(len(i), n_speech), j
    raise ValueError(f"unknown control {control!r}; expected one of {CONTROLS} (other-item targets: "
                     "other_item_targets)")


def other_item_tokens(j: Tensor, n_text: int, n_text_other: int) -> Tensor:
    """Target tokens `[m]` in another item's text span for this item's targets j: the token at the same relative
    position, `floor((j + 1/2) Tt_other / Tt)` (j itself when the lengths are equal). When the other item has fewer
    tokens, several targets map to the same token (the edit count m is unchanged); when it has more, some of its
    tokens are never used."""
    return (2 * j.long() + 1) * n_text_other // (2 * n_text)


def other_item_targets(js: Sequence[Tensor], n_texts: Sequence[int], generator: torch.Generator
                       ) -> tuple[Tensor, list[Tensor]]:
    """Other-item targets for a batch (or shard) of B >= 2 items: a seeded derangement `partners` `[B]` (item g
    takes its targets from item partners[g] != g) and per item the target tokens `[m_g]` in the partner's text span
    (`other_item_tokens`). The speech positions stay the path positions i; the runner gathers the partner's text
    states at the edited layer, `rec_t[partners[g]][layer][tokens[g]]`."""
    if len(js) != len(n_texts):
        raise ValueError(f"{len(js)} target lists but {len(n_texts)} text lengths")
    partners = derangement(len(js), generator)
    tokens = [other_item_tokens(j, n_texts[g], n_texts[int(partners[g])]) for g, j in enumerate(js)]
    return partners, tokens


def apply_row_edits(h: Tensor, positions: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """States `[T, d]` with rows `positions` `[m]` replaced by `fn(h[positions])` (`[m, d]`), as `hooks.edit_rows`
    does inside a forward: an edited copy in h's dtype, the input untouched."""
    out = h.clone()
    out[positions] = fn(h[positions]).to(h.dtype)
    return out
