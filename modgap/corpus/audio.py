"""Reading an item's recording (a file, or the bytes a `datasets` Audio column embeds) as 16 kHz mono, and the error
of a recording that cannot become model input."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from modgap.atomic import atomic
from modgap.corpus.timing import SAMPLE_RATE


class AudioError(ValueError):
    """An item's recording cannot be used: unreadable, of the wrong rate, empty, too long for the model's window or
    filling no audio position. The one-line message names the item (and the file when one is read). Such an item is
    excluded or skipped with this reason; it never stops a shard."""


def read_audio(item_id: str, source: str | Path | io.BytesIO, where: str | None = None) -> tuple[np.ndarray, int]:
    """`[n]` float32 mono samples of a recording (channels averaged) and its sample rate; AudioError naming the item
    and `where` the audio came from (default: the file) when soundfile cannot read it."""
    try:
        audio, rate = sf.read(source, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, TypeError) as e:  # soundfile raises LibsndfileError (a RuntimeError) on bad files
        raise AudioError(f"item {item_id}: cannot read its audio {where or source} ({e})") from e
    return audio.mean(axis=1), rate


def read_mono_16k(item_id: str, source: str | Path | io.BytesIO, where: str | None = None) -> np.ndarray:
    """`[n]` float32 mono samples at 16 kHz (`read_audio`, soxr-resampled when the file has another rate)."""
    audio, rate = read_audio(item_id, source, where)
    return audio if rate == SAMPLE_RATE else soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def write_recording(item_id: str, blob: dict, folder: Path, out: Path, where: str) -> None:
    """Decode one `{"bytes", "path"}` Audio value to a 16 kHz mono FLAC at `out`, written atomically.

    Embedded bytes win; without them `path` (relative to `folder`) is read. AudioError naming the item and `where`.
    """
    data, path = blob.get("bytes"), blob.get("path")
    if data is None and not path:
        raise AudioError(f"item {item_id}: no audio bytes or path in {where}")
    source = io.BytesIO(data) if data is not None else folder / path
    audio = read_mono_16k(item_id, source, where if data is not None else f"{where} ({folder / path})")
    if audio.size == 0:
        raise AudioError(f"item {item_id}: empty audio in {where}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic(out) as tmp:
        sf.write(tmp, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
