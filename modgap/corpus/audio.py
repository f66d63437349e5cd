"""Reading an item's recording, and the error of a recording that cannot become model input."""
from __future__ import annotations

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """An item's recording cannot be used: unreadable, of the wrong rate, empty, too long for the model's window or
    filling no audio position. The one-line message names the item (and the file when one is read). Such an item is
    excluded or skipped with this reason; it never stops a shard."""


def read_audio(item_id: str, path: str) -> tuple[np.ndarray, int]:
    """`[n]` float32 mono samples of a recording (channels averaged) and its sample rate; AudioError naming the item
    and the file when soundfile cannot read it."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError) on bad files
        raise AudioError(f"item {item_id}: cannot read its audio {path} ({e})") from e
    return audio.mean(axis=1), rate
