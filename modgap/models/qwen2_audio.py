"""Qwen2-Audio (Qwen2-Audio-7B-Instruct and the lab model): Whisper log-mel windows, 40 ms per audio position.

The encoder takes exactly one window of `2 * max_source_positions` mel frames (30 s for the 7B model, less for the
lab model); conv stride 2 then average pooling 2 give one position per 4 frames. Longer audio is cut into windows that
go through the encoder as a batch; the model concatenates their valid outputs into one run of placeholders.
"""
from __future__ import annotations

import numpy as np
import torch
from transformers import AutoFeatureExtractor, Qwen2AudioForConditionalGeneration

from modgap.models.base import SAMPLE_RATE, AudioInputs, SpeechLM


class Qwen2Audio(SpeechLM):
    family = "qwen2_audio"
    model_class = Qwen2AudioForConditionalGeneration

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.path)
        self._check_window()

    def _check_window(self) -> None:
        """The extractor must pad to exactly the encoder's window (it would fail on every item otherwise)."""
        encoder = 2 * self.model.config.audio_config.max_source_positions * self.feature_extractor.hop_length
        if encoder != self.feature_extractor.n_samples:
            raise ValueError(f"{self.family}: {self.path}: the feature extractor pads to "
                             f"{self.feature_extractor.n_samples} samples but the encoder window is {encoder}")

    @property
    def window_samples(self) -> int:
        return int(self.feature_extractor.n_samples)

    def _n_positions(self, frames: torch.Tensor | int) -> torch.Tensor:
        """Audio positions the encoder gives for `frames` unpadded mel frames (the model's own length rule)."""
        return self.model.model.audio_tower._get_feat_extract_output_lengths(torch.as_tensor(frames))[1]

    @property
    def ms_per_position(self) -> float:
        frames = self.feature_extractor.nb_max_frames
        frame_ms = 1000 * self.feature_extractor.hop_length / SAMPLE_RATE
        return frames * frame_ms / int(self._n_positions(frames))

    def _audio(self, wave: np.ndarray) -> AudioInputs:
        feats = self.feature_extractor(
            self._windows(wave), sampling_rate=SAMPLE_RATE, padding="max_length", return_attention_mask=True,
            return_tensors="pt",
        )
        mask = feats["attention_mask"]
        n = int(self._n_positions(mask.sum(-1)).sum())
        return AudioInputs({"input_features": feats["input_features"], "feature_attention_mask": mask}, n, n)
