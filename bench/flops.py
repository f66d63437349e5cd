"""FLOPs of a Qwen2-Audio forward, counted by hand from its configuration.

Convention (that of `torch.utils.flop_counter`): 2 FLOPs per multiply-add of every matrix product and convolution,
i.e. 2 x weights x positions for each projection, plus attention's QK^T and AV over the whole (unmasked) T x T;
nothing for embeddings, norms, activations, softmax or biases. The bench's measured forward rate and the paper-scale
projection both count this way, so one divides by the other.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """The sizes of a Qwen2-Audio model that set its FLOPs: decoder (width `d`, MLP `ffn`, `layers`, query and
    key-value `heads`, `vocab`) and Whisper-style audio encoder (`enc_*`, over `enc_positions` frames per window)."""

    d: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    enc_d: int
    enc_ffn: int
    enc_layers: int
    mel: int = 128
    enc_positions: int = 1500

    @classmethod
    def of(cls, config) -> Geometry:
        """The geometry of a `Qwen2AudioConfig`."""
        t, a = config.text_config, config.audio_config
        return cls(t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
                   t.num_key_value_heads, t.vocab_size, a.d_model, a.encoder_ffn_dim, a.encoder_layers,
                   a.num_mel_bins, a.max_source_positions)


# Qwen2-Audio-7B(-Instruct)'s config.json values.
QWEN2_AUDIO_7B = Geometry(d=4096, ffn=11008, layers=32, heads=32, kv_heads=32, vocab=156032,
                          enc_d=1280, enc_ffn=5120, enc_layers=32)


def encoder_flops(g: Geometry, windows: int) -> float:
    """FLOPs of the audio encoder and projector over `windows` audio windows: two convolutions (kernel 3, the second
    with stride 2) from 2 x `enc_positions` mel frames, the encoder layers over `enc_positions`, the projector over
    the `enc_positions / 2` pooled positions (every window runs in full, whatever the audio's length)."""
    p = g.enc_positions
    convs = 2 * 3 * (g.mel * g.enc_d * 2 * p + g.enc_d * g.enc_d * p)
    layers = g.enc_layers * (2 * p * (4 * g.enc_d**2 + 2 * g.enc_d * g.enc_ffn) + 4 * p * p * g.enc_d)
    projector = 2 * (p // 2) * g.enc_d * g.d
    return windows * (convs + layers + projector)


def decoder_flops(g: Geometry, rows: int, tokens: int, context: int | None = None, logits: int = 1) -> float:
    """FLOPs of the decoder over `rows` x `tokens` new positions (padding included), each attending to `context`
    positions (default `tokens`: a prefill), with the LM head on `logits` positions per row."""
    kv = g.d * g.kv_heads // g.heads
    context = tokens if context is None else context
    per_layer = 2 * tokens * (2 * g.d * g.d + 2 * g.d * kv + 3 * g.d * g.ffn) + 4 * tokens * context * g.d
    return rows * (g.layers * per_layer + 2 * logits * g.d * g.vocab)
