"""Control edit sites for P1's interventions (METHODS.md, "Controls"): the same item, the same number m of edits,
but at random or evenly spaced speech positions, or with another item's text vectors at the path positions. The
effect of interest is path minus random.

An edit condition is a pair of index tensors into the spans (`conditions.select_edits`): speech positions i `[m]`
and text targets j `[m]`, position i[k] receiving op(h^S[i[k]], h^T[j[k]]). Every function here is pure and seeded
through an explicit `torch.Generator` (`item_generator` gives one per item and condition, so a draw does not depend
on batching or sharding); the result plugs into `hooks.RowEdit` as the path edits do.
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from modgap.metrics.baselines import derangement, proportional_path

CONTROLS = ("random", "even", "other_item")  # the configurable controls of every edit condition
SITES = ("path", *CONTROLS)  # the `control` column of an edit row ("none" for every other row)


def item_generator(seed: int, *keys: str) -> torch.Generator:
    """A generator seeded from `seed` and `keys` (e.g. the condition's label and the item id) through SHA-256:
    the same draw for the same keys in any process, batch or shard."""
    digest = hashlib.sha256("\0".join(map(str, (seed, *keys))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


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
    raise ValueError(f"unknown site control {control!r}; expected path, random or even (other_item keeps the "
                     "path positions: other_item_tokens)")


def other_item_tokens(j: Tensor, n_text: int, n_text_other: int) -> Tensor:
    """Target tokens `[m]` in another item's text span for this item's targets j: the token at the same relative
    position, `floor((j + 1/2) Tt_other / Tt)` (j itself when the lengths are equal). When the other item has fewer
    tokens, several targets map to the same token (the edit count m is unchanged); when it has more, some of its
    tokens are never used."""
    return (2 * j.long() + 1) * n_text_other // (2 * n_text)


def other_item_partners(n: int, seed: int) -> Tensor:
    """Partners `[n]` of a pool of n >= 2 items for the other-item control: a seeded derangement (item g takes its
    text targets from item partners[g] != g); ValueError for fewer than 2 items."""
    if n < 2:
        raise ValueError(f"the other_item control needs a pool of at least 2 items, got {n}")
    return derangement(n, torch.Generator().manual_seed(seed))
