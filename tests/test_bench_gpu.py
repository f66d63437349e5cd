"""The GPU bench's hand FLOP count (bench/flops.py) against torch's own count of a forward that ran."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import soundfile as sf
import tiny_models as tiny
from torch.utils.flop_counter import FlopCounterMode

import gpu
from flops import Geometry
from modgap.models import load_adapter


def test_forward_flops_match_torch_flop_counter(tmp_path):
    """Padded batches of S and T prompts through the tiny Qwen2-Audio with eager attention (every matmul visible to
    the counter), with a real config's shape ratios: grouped KV heads, MLP wider than the width."""
    path = tiny.build_qwen2_audio(tmp_path / "model", tiny.tiny_tokenizer(), window_s=2)
    adapter = load_adapter("qwen2_audio", str(path), device="cpu", attn_implementation="eager")
    g = Geometry.of(adapter.model.config)
    assert (g.kv_heads, g.enc_positions) == (2, 100)
    rows = gpu.noise_rows(3, 1.5, tmp_path)
    sf.write(rows[1].audio, tiny.noise(0.7), 16000, format="FLAC")  # a shorter recording: fewer audio positions
    inputs = gpu.build_inputs(adapter, rows, "letter")
    assert len({x.model_inputs["input_ids"].shape[1] for x in inputs[0]}) > 1  # S batches need padding
    with FlopCounterMode(display=False) as counter:
        gpu.prefill_all(adapter, inputs, 2, hidden=False)
    counted = counter.get_total_flops()
    assert counted > 0 and gpu.forward_flops(g, inputs, 2) == counted
