"""Where an adapter's hook points and readout live in its model, and its audio geometry: one row of the model table.

Module paths are found by identity among `adapter.model.named_modules()` (the modules the adapter itself uses), so
they name what `SpeechLM.layers`, `final_norm` and the output embeddings really are in the loaded model.
"""
from __future__ import annotations

from torch import nn

from modgap.models.base import SpeechLM


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of `module` inside `model` (its first name if it has several)."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def module_map(adapter: SpeechLM) -> dict[str, str]:
    """decoder_layers, final_norm and readout_head module paths, the audio placeholder token, audio positions per
    second and the time resolution (ms of audio one position stands for), as strings."""
    return {
        "decoder_layers": module_path(adapter.model, adapter.layers),
        "final_norm": module_path(adapter.model, adapter.final_norm),
        "readout_head": module_path(adapter.model, adapter.model.get_output_embeddings()),
        "audio_token": adapter.audio_token,
        "positions_per_s": f"{1000 / adapter.ms_per_position:g}",
        "time_resolution_ms": f"{adapter.time_resolution_ms:g}",
    }
