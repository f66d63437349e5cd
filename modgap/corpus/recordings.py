"""A dataset's own recordings as 16 kHz mono: read from a file or from the bytes a `datasets` Audio column embeds."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from modgap.atomic import atomic
from modgap.corpus.timing import SAMPLE_RATE


class RecordingError(ValueError):
    """A recording that cannot be decoded; the message names the item and where its audio came from."""


def read_mono_16k(source: str | Path | io.BytesIO) -> np.ndarray:
    """[n_samples] float32 mono at 16 kHz from an audio file or in-memory file (channels averaged, soxr resampled)."""
    audio, sr = sf.read(source, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE).astype(np.float32)
    return audio


def write_recording(blob: dict, folder: Path, out: Path, where: str) -> None:
    """Decode one `{"bytes", "path"}` Audio value to a 16 kHz mono FLAC at `out`, written atomically.

    Embedded bytes win; without them `path` (relative to `folder`) is read. Raises RecordingError naming `where`.
    """
    data, path = blob.get("bytes"), blob.get("path")
    if data is None and not path:
        raise RecordingError(f"{where}: no audio bytes or path")
    try:
        audio = read_mono_16k(io.BytesIO(data) if data is not None else folder / path)
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError) as e:
        raise RecordingError(f"{where}: undecodable audio ({e})") from None
    if audio.size == 0:
        raise RecordingError(f"{where}: empty audio")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic(out) as tmp:
        sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
