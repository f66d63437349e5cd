"""The decision position's attention row, recomputed from what a decoder block's self-attention receives.

sdpa and flash attention never materialise attention weights, so the row of the last query is recomputed with the
module's own parts, as its forward computes it: `q_proj` (the last position) and `k_proj` (every position), the rotary
embedding the block receives (`position_embeddings`: cos, sin, with a family's multimodal rope and rope scaling
already folded in), the family's own `apply_rotary_pos_emb`, the grouped-query head repeat and `scaling` (Granite's
`attention_multiplier`). The prompt is given without its padding, so the causal row of its last position is a softmax
over all of its positions. Supported: the rotate-half rope attentions of Qwen2 (Qwen2-Audio), Qwen2.5-Omni's thinker,
Llama (Voxtral) and Granite, without query/key norms or sliding windows.
"""
from __future__ import annotations

import sys

import torch
from torch import nn


def last_query_attention(module: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                         ) -> torch.Tensor:
    """Attention weights of the last position of one unpadded prompt: hidden [T, d] (the module's input), cos and
    sin [T, head_dim] -> [heads, T] float32, each row summing to 1."""
    window = getattr(module, "sliding_window", None)
    if window is not None and hidden.shape[0] > window:
        raise ValueError(f"layer {module.layer_idx}: sliding-window attention ({window}) is not supported")
    rope = sys.modules[type(module).__module__].apply_rotary_pos_emb
    hd = module.head_dim
    q = module.q_proj(hidden[-1:]).view(1, -1, hd).transpose(0, 1)[None]  # [1, H, 1, hd]
    k = module.k_proj(hidden).view(hidden.shape[0], -1, hd).transpose(0, 1)[None]  # [1, H_kv, T, hd]
    q, _ = rope(q, q, cos[None, -1:], sin[None, -1:])
    k, _ = rope(k, k, cos[None], sin[None])
    k = k[0].repeat_interleave(module.num_key_value_groups, dim=0)  # [H, T, hd]
    scores = torch.einsum("hd,htd->ht", q[0, :, 0].float(), k.float()) * module.scaling
    return torch.softmax(scores, -1)
