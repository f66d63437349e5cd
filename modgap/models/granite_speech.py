"""Granite-Speech: 80-bin log-mel stacked in frame pairs, a Q-Former projector, 10 positions/s in 300 ms blocks.

GraniteSpeechFeatureExtractor needs torchaudio, which is not installed; `log_mel` recomputes its features with
transformers' numpy audio utilities (torchaudio MelSpectrogram defaults: periodic Hann window of `win_length` centred
in `n_fft`, centred reflect-padded frames, power spectrum, HTK mel scale without norm), then applies the extractor's own
post-processing. Positions: the projector turns each block of `window_size` (15) encoder frames (2 mel frames each,
20 ms) into `window_size // downsample_rate` (3) queries that all attend to the whole block, so the 3 positions of a
block share its 300 ms interval (`position_times_ms`, `time_resolution_ms`) although there are 100 ms of audio per
position on average. The conformer has no fixed input length, so there is no window.

Granite-Speech checkpoints ship a LoRA adapter meant only for audio inputs as a peft adapter in the model folder
(adapter_config.json, adapter_model.safetensors), which `from_pretrained` loads (transformers' PEFT integration). It is
switched on for S and off for T, as the model's own `generate` does, but through peft's layers: transformers'
`enable_adapters` / `disable_adapters` need peft >= 0.22.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import GenerationMixin, GraniteSpeechForConditionalGeneration
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function
from transformers.feature_extraction_utils import FeatureExtractionMixin

from modgap.models.base import SAMPLE_RATE, AudioInputs, Condition, SpeechLM


def log_mel(wave: np.ndarray, config: dict) -> torch.Tensor:
    """[1, frames // 2, 2 * n_mels] GraniteSpeechFeatureExtractor features of a 16 kHz waveform, without torchaudio."""
    n_fft, n_mels = config.get("n_fft", 512), config.get("n_mels", 80)
    power = spectrogram(
        wave.astype(np.float32),
        window_function(config.get("win_length", 400), "hann", frame_length=n_fft, periodic=True),
        frame_length=n_fft, hop_length=config.get("hop_length", 160), power=2.0, center=True, pad_mode="reflect",
        mel_filters=mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm=None, mel_scale="htk",
        ),
        mel_floor=1e-10,
    )  # [n_mels, frames]
    logmel = torch.from_numpy(np.log10(power).T.astype(np.float32))  # as the extractor: clip at 1e-10, log10
    logmel = torch.maximum(logmel, logmel.max() - 8.0) / 4 + 1
    logmel = logmel[: len(logmel) // 2 * 2]  # drop the last frame if odd
    return logmel.reshape(1, -1, 2 * n_mels)


class GraniteSpeech(SpeechLM):
    family = "granite_speech"
    model_class = GraniteSpeechForConditionalGeneration
    content_as_string = True  # Granite's template takes the user turn as a string with "<|audio|>" in it
    batch_audio = False  # variable-length log-mel without a padding mask: padded frames would change the conformer

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.features = FeatureExtractionMixin.get_feature_extractor_dict(self.path)[0]
        self.hop = self.features.get("hop_length", 160)
        config = self.model.config
        if config.has_lora_adapter and not self.model._hf_peft_config_loaded:
            raise ValueError(f"{self.family}: {self.path} sets has_lora_adapter but holds no audio LoRA adapter "
                             "(adapter_config.json and adapter_model.safetensors)")
        self.lora_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        self.queries_per_block = config.window_size // config.downsample_rate

    @property
    def window_samples(self) -> None:
        return None

    @property
    def block_ms(self) -> float:
        """Audio in one projector block: `window_size` encoder frames of 2 mel hops."""
        return 1000 * 2 * self.hop / SAMPLE_RATE * self.model.config.window_size

    @property
    def ms_per_position(self) -> float:
        return self.block_ms / self.queries_per_block

    @property
    def time_resolution_ms(self) -> float:
        return self.block_ms

    def position_times_ms(self, n_positions: int) -> np.ndarray:
        """[n, 2] start and end (ms) of each audio position: its projector block's interval."""
        block = np.arange(n_positions, dtype=np.float64)[:, None] // self.queries_per_block
        return np.concatenate([block, block + 1], axis=1) * self.block_ms

    def _audio(self, wave: np.ndarray) -> AudioInputs:
        # GraniteSpeechFeatureExtractor._get_num_audio_features: whole projector blocks of window_size encoder frames
        window = self.model.config.window_size
        encoder_frames = (wave.size // self.hop + 1) // 2
        n = math.ceil(encoder_frames / window) * self.queries_per_block
        return AudioInputs({"input_features": log_mel(wave, self.features)}, n, n)

    @contextmanager
    def _condition(self, condition: Condition) -> Iterator[None]:
        for layer in self.lora_layers:
            layer.enable_adapters(condition == "S")
        yield

    def _generate_ids(self, model_inputs: dict[str, torch.Tensor], **decoding: Any) -> torch.Tensor:
        """Plain `GenerationMixin.generate`: the model's override only switches the adapter (as `_condition` has),
        with transformers' PEFT calls that need peft >= 0.22."""
        return GenerationMixin.generate(self.model, **model_inputs, **decoding)
