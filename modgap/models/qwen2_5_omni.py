"""Qwen2.5-Omni, the thinker only: the same Whisper features and 40 ms positions as Qwen2-Audio.

Its encoder has no fixed input length (it attends within chunks of `2 * n_window` frames), so the window is the
feature extractor's padding length (300 s for Qwen2.5-Omni-7B); longer audio is cut into such windows. With audio and
text only, the thinker's 3-D rope positions are plain sequential positions.
"""
from __future__ import annotations

from transformers import Qwen2_5OmniThinkerForConditionalGeneration

from modgap.models.qwen2_audio import Qwen2Audio


class Qwen25Omni(Qwen2Audio):
    family = "qwen2_5_omni"
    model_class = Qwen2_5OmniThinkerForConditionalGeneration

    def _check_window(self) -> None:
        """Any extractor length works: the encoder chunks its input itself."""
