"""Modality-gap metrics on hidden states: geometry, alignment paths (P1 argmax, P2 DTW) and their ground truth."""
from .dtw import aligned_pairs, dtw_path, dtw_paths
from .geometry import pooled_similarity, token_norms, token_similarity
from .alignment import alignment_path, alignment_path_score, bottom_k_tokens, path_values
from .alignment import path_consistency, path_monotonicity
from .truth import argmax_path_truth, dtw_path_truth, path_truth, true_positions

__all__ = [
    "aligned_pairs",
    "alignment_path",
    "alignment_path_score",
    "argmax_path_truth",
    "bottom_k_tokens",
    "dtw_path",
    "dtw_path_truth",
    "dtw_paths",
    "path_consistency",
    "path_monotonicity",
    "path_truth",
    "path_values",
    "pooled_similarity",
    "token_norms",
    "token_similarity",
    "true_positions",
]

from .cka import CKAAccumulator, MinibatchCKA, cka_accumulator, cka_readouts, cross_layer_cka  # noqa: E402
from .cka import linear_cka, matrix_agreement  # noqa: E402
from .moments import MomentAccumulator, standardized_l2  # noqa: E402

__all__ += [
    "CKAAccumulator",
    "MinibatchCKA",
    "MomentAccumulator",
    "cka_accumulator",
    "cka_readouts",
    "cross_layer_cka",
    "linear_cka",
    "matrix_agreement",
    "standardized_l2",
]
