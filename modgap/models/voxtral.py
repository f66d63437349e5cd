"""Voxtral: Whisper log-mel in 30 s windows, 80 ms per audio position.

As VoxtralProcessor does, the whole recording is padded to a multiple of the window, featurised at once and cut into
windows of `2 * max_source_positions` frames; each window gives `max_source_positions` encoder frames, which the
projector groups by `intermediate_size / hidden_size` (4) into positions. Every position of every window is in the
sequence (375 per 30 s window), but only the first `ceil(samples / samples_per_position)` cover the recording: those
are the span; the rest encode the padding.

Voxtral's hub checkpoints ship a mistral-common (tekken) tokenizer without a Jinja chat template; this adapter needs a
tokenizer with a chat template whose audio part renders `[BEGIN_AUDIO][AUDIO]`, as built in the tests.
"""
from __future__ import annotations

import math

import numpy as np
from transformers import AutoFeatureExtractor, VoxtralForConditionalGeneration

from modgap.models.base import SAMPLE_RATE, AudioInputs, SpeechLM


class Voxtral(SpeechLM):
    family = "voxtral"
    model_class = VoxtralForConditionalGeneration

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(self.path)
        audio = self.model.config.audio_config
        self.window_frames = 2 * audio.max_source_positions  # conv1 stride 1, conv2 stride 2
        self.positions_per_window = audio.max_source_positions // (audio.intermediate_size // audio.hidden_size)

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.feature_extractor.hop_length

    @property
    def ms_per_position(self) -> float:
        return 1000 * self.window_samples / SAMPLE_RATE / self.positions_per_window

    def _audio(self, wave: np.ndarray) -> AudioInputs:
        feats = self.feature_extractor(
            wave, sampling_rate=SAMPLE_RATE, padding=True, truncation=False, pad_to_multiple_of=self.window_samples,
            return_tensors="pt",
        )["input_features"]  # [1, n_mels, windows * window_frames]
        windows = feats.reshape(feats.shape[1], -1, self.window_frames).transpose(0, 1)
        n_content = math.ceil(wave.size / (self.window_samples / self.positions_per_window))
        return AudioInputs({"input_features": windows}, len(windows) * self.positions_per_window, n_content)
