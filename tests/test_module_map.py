"""The module map of every family, on the tiny models (the real checkpoints share the module layout)."""
from __future__ import annotations

import pytest
import tiny_models as tiny
from torch import nn

from modgap.models import load_adapter
from modgap.models.module_map import module_map, module_path

# Positions per second and resolution come from hop lengths and pooling, which the tiny models share with the real
# checkpoints (only their windows are shorter).
EXPECTED = {
    "qwen2_audio": ("model.language_model.layers", "<|AUDIO|>", "25", "40"),
    "qwen2_5_omni": ("model.language_model.layers", "<|AUDIO|>", "25", "40"),
    "voxtral": ("model.language_model.layers", "[AUDIO]", "12.5", "80"),
    "granite_speech": ("model.language_model.layers", "<|audio|>", "10", "300"),
}


@pytest.mark.parametrize("family", list(tiny.BUILDERS))
def test_module_map_of_every_family(family, tmp_path):
    a = load_adapter(family, tiny.BUILDERS[family](tmp_path, tiny.tiny_tokenizer()), device="cpu")
    layers, token, per_s, resolution = EXPECTED[family]
    assert module_map(a) == {
        "decoder_layers": layers, "final_norm": "model.language_model.norm", "readout_head": "lm_head",
        "audio_token": token, "positions_per_s": per_s, "time_resolution_ms": resolution,
    }
    assert a.model.get_submodule(layers) is a.layers  # the path leads back to the hooked blocks


def test_module_path_rejects_a_foreign_module():
    with pytest.raises(ValueError, match="Linear is not a submodule of Sequential"):
        module_path(nn.Sequential(nn.ReLU()), nn.Linear(2, 2))
