"""DTW base-layer sensitivity (P2 Fig. 9): how much do the DTW path, and the CKA best matches built on it, change
with the layer whose similarity matrix is aligned?

- Path agreement of a path with the default base layer's: the fraction of text tokens mapped to the same speech
  positions on both. A DTW path maps each text token to a run of consecutive speech positions (it is monotone and
  moves one position at a time), so the sets are equal iff the runs' first and last positions are.
- Best-match agreement: the fraction of speech layers whose best-match text layer (`cka_readouts`) is the same
  under both base layers' CKA matrices.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .cka import MinibatchCKA, cka_readouts
from .dtw import aligned_pairs


def token_runs(path: Tensor) -> Tensor:
    """First and last speech position mapped to each text token by a DTW path `[K, 2]` (rows (i, j) ending at
    (Ts-1, Tt-1)), `[Tt, 2]` long."""
    speech, text = path.long().unbind(1)
    n_text = int(text[-1]) + 1
    first = speech.new_full((n_text,), int(speech.max()) + 1).scatter_reduce(0, text, speech, "amin")
    last = speech.new_full((n_text,), -1).scatter_reduce(0, text, speech, "amax")
    return torch.stack([first, last], 1)


def path_agreement(path: Tensor, reference: Tensor) -> float:
    """Fraction of text tokens whose speech positions are the same on two DTW paths of one item (`[K, 2]` each)."""
    return (token_runs(path) == token_runs(reference.to(path.device))).all(1).double().mean().item()


def best_match_agreement(cka: Tensor, reference: Tensor) -> float:
    """Fraction of speech layers (rows) whose best-match text layer is the same in two CKA matrices `[L, M]`."""
    return (cka_readouts(cka)[0] == cka_readouts(reference)[0]).double().mean().item()


class BaseLayerSensitivity:
    """Accumulates, over items, every analysed base layer's path agreement with the default base layer and, when
    `cka_batch` > 0, an unbiased minibatch CKA `[layers, layers]` per base layer (batches of `cka_batch` pairs:
    memory about 2 * layers^2 * cka_batch * d floats) for the best-match agreement."""

    def __init__(self, layers: list[int], default: int, pairs: str, cka_batch: int, device: torch.device) -> None:
        self.layers, self.default, self.pairs = layers, default, pairs
        self.agreement: list[list[float]] = []  # per item, per base layer
        n = len(layers)
        self.cka = [MinibatchCKA(n, n, True, device, cka_batch) for _ in layers] if cka_batch else []

    def update(self, hs: Tensor, ht: Tensor, paths: list[Tensor]) -> None:
        """One item: its states hs `[layers, Ts, d]`, ht `[layers, Tt, d]` and its DTW path at every base layer."""
        self.agreement.append([path_agreement(p, paths[self.default]) for p in paths])
        for acc, path in zip(self.cka, paths):
            acc.update(*aligned_pairs(hs, ht, path, self.pairs))

    def table(self) -> pd.DataFrame:
        """Per base layer: mean and sd over items of the path agreement, the best-match agreement (NaN without
        CKA), and the item count."""
        agreement = np.asarray(self.agreement, dtype=np.float64)
        if self.cka:
            reference = self.cka[self.default].result()
            best = [best_match_agreement(acc.result(), reference) for acc in self.cka]
        else:
            best = [float("nan")] * len(self.layers)
        return pd.DataFrame({"base_layer": self.layers, "default": [k == self.default for k in range(len(self.layers))],
                             "path_agreement": agreement.mean(0), "path_agreement_sd": agreement.std(0),
                             "best_match_agreement": best, "n_items": len(agreement)})
