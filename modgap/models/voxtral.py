"""Voxtral: prompts rendered by mistral-common through VoxtralProcessor, Whisper log-mel in 30 s windows, 80 ms per
audio position.

Voxtral checkpoints ship only a mistral-common (tekken) tokenizer, which transformers loads as MistralCommonBackend: no
Jinja chat template and no offsets mapping. Both prompts therefore go through the official path,
`VoxtralProcessor.apply_chat_template` (mistral-common's `encode_chat_completion`): the system prompt as a system
message, the user turn, and the answer cue as a final assistant message that is continued. The audio is passed as a
base64 float WAV of the 16 kHz waveform: lossless, and the processor takes audio only as a file path, URL or base64
string, not as an array.

The instruction follows the question in the same user turn: after the audio part in S; appended to the transcript in
T, as one text part, since mistral-common joins separate text parts with a blank line that S does not get.

mistral-common pads the audio to whole 30 s windows and puts 12.5 placeholders per second of it (375 per window, as
the encoder's `max_source_positions / 4`); the processor cuts the log-mel features of the padded audio into windows of
`2 * max_source_positions` frames, and the encoder plus projector (4 frames per position) fill the placeholders. Only
the first `ceil(samples / 1280)` placeholders cover the recording: those are the span; the rest encode padding.
T word offsets come from the token pieces' bytes (mistral-common's decoding), located after the user turn's [INST].
"""
from __future__ import annotations

import base64
import io
import math

import numpy as np
import soundfile as sf
import torch
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from transformers import AutoFeatureExtractor, VoxtralForConditionalGeneration, VoxtralProcessor

from modgap.models.base import SAMPLE_RATE, AudioInputs, SpeechLM


def wav_base64(wave: np.ndarray) -> str:
    """A 16 kHz waveform as base64 of a 32-bit float WAV file (decodes back to the same samples)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wave, dtype=np.float32), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def char_offsets(text: str, byte_offsets: np.ndarray) -> np.ndarray:
    """[n, 2] character offsets in `text` of [start, end) offsets [n, 2] into its UTF-8 bytes, clipped to the text;
    a partly covered character counts as covered."""
    starts = np.cumsum([0] + [len(c.encode()) for c in text])  # [len(text) + 1] byte offset of each character
    clipped = np.clip(np.asarray(byte_offsets).reshape(-1, 2), 0, starts[-1])
    first = np.searchsorted(starts, clipped[:, 0], side="right") - 1
    return np.stack([first, np.searchsorted(starts, clipped[:, 1], side="left")], axis=1)


class Voxtral(SpeechLM):
    family = "voxtral"
    model_class = VoxtralForConditionalGeneration

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.processor = VoxtralProcessor(AutoFeatureExtractor.from_pretrained(self.path), self.tokenizer)
        audio = self.model.config.audio_config
        self.window_frames = 2 * audio.max_source_positions  # conv1 stride 1, conv2 stride 2
        self.positions_per_window = audio.max_source_positions // (audio.intermediate_size // audio.hidden_size)
        self._instruct = self.tokenizer.tokenizer.instruct_tokenizer  # mistral-common's InstructTokenizer
        self._check_window()
        self._check_system()

    def _chat_template(self) -> None:
        """None: prompts are rendered by mistral-common (`VoxtralProcessor.apply_chat_template`)."""
        return None

    def _check_window(self) -> None:
        """mistral-common must pad audio to exactly the encoder's window (every item would fail otherwise)."""
        config = self._instruct.audio_encoder.audio_config
        chunk = None if config.chunk_length_s is None else config.chunk_frames
        if chunk != self.window_samples:
            raise ValueError(f"{self.family}: {self.path}: mistral-common pads audio to {chunk} samples but the "
                             f"encoder window is {self.window_samples}")

    def _check_system(self) -> None:
        """A system prompt must pass mistral-common's request validation with audio (tokenizers before v13 refuse)."""
        if self.prompt.system is None:
            return
        try:
            self._request([self._audio_content(np.zeros(self.window_samples // self.positions_per_window))])
        except ValueError as e:
            raise ValueError(f"{self.family}: {self.path} takes no system prompt with audio ({e})") from None

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.processor.feature_extractor.hop_length

    @property
    def ms_per_position(self) -> float:
        return 1000 * self.window_samples / SAMPLE_RATE / self.positions_per_window

    def _audio(self, wave: np.ndarray) -> AudioInputs:
        """Position counts only: the processor makes the features together with the prompt."""
        windows = math.ceil(wave.size / self.window_samples)
        n_content = math.ceil(wave.size * self.positions_per_window / self.window_samples)
        return AudioInputs({}, windows * self.positions_per_window, n_content)

    @staticmethod
    def _audio_content(wave: np.ndarray) -> dict:
        """A user-turn audio part as VoxtralProcessor takes an in-memory waveform (base64; no array form)."""
        return {"type": "audio", "base64": wav_base64(wave)}

    def _request(self, content: list[dict]) -> tuple[str, dict[str, torch.Tensor]]:
        """The rendered text and model inputs (input_ids, attention_mask [1, T], input_features [windows, mels,
        frames] with audio) of a chat with the prompt's system message, `content` as the user turn and the cue."""
        messages = [{"role": "system", "content": self.prompt.system}] if self.prompt.system is not None else []
        messages.append({"role": "user", "content": content})
        if self.prompt.cue:
            messages.append({"role": "assistant", "content": self.prompt.cue})
        enc = self.processor.apply_chat_template(
            messages, continue_final_message=bool(self.prompt.cue),
            processor_kwargs={"max_source_positions": self.window_frames, "pad_to_multiple_of": self.window_samples},
        )
        return self.tokenizer.decode(enc["input_ids"][0], skip_special_tokens=False), dict(enc)

    def _speech_prompt(self, wave: np.ndarray, audio: AudioInputs, instruction: str | None
                       ) -> tuple[str, dict[str, torch.Tensor]]:
        parts = [{"type": "text", "text": instruction}] if instruction else []
        return self._request([self._audio_content(wave), *parts])

    def _text_prompt(self, transcript: str, instruction: str | None) -> tuple[str, dict[str, torch.Tensor], np.ndarray]:
        text, enc = self._request([{"type": "text", "text": transcript + (instruction or "")}])
        ids = enc["input_ids"][0].tolist()
        pieces = [self._instruct.tokenizer.id_to_byte_piece(i, SpecialTokenPolicy.KEEP) for i in ids]
        ends = np.cumsum([len(p) for p in pieces])
        byte_offsets = np.stack([ends - [len(p) for p in pieces], ends], axis=1)  # [T, 2] into the rendered bytes
        start = ends[len(ids) - 1 - ids[::-1].index(self._instruct.BEGIN_INST)]  # the last user turn's content
        transcript_bytes = transcript.encode()
        if b"".join(pieces)[start : start + len(transcript_bytes)] != transcript_bytes:
            raise ValueError(f"{self.family}: mistral-common changes the user text; cannot locate the T span")
        return text, enc, char_offsets(transcript, byte_offsets - start)  # tokens outside clip to [0, 0] or [n, n]
