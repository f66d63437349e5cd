"""Adapter registry: `load_adapter(family, path, ...)` -> SpeechLM."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modgap.models.base import Prompt, SpeechLM
from modgap.models.granite_speech import GraniteSpeech
from modgap.models.qwen2_5_omni import Qwen25Omni
from modgap.models.qwen2_audio import Qwen2Audio
from modgap.models.voxtral import Voxtral
from modgap.plan import ModelRun

FAMILIES: dict[str, type[SpeechLM]] = {c.family: c for c in (Qwen2Audio, Qwen25Omni, Voxtral, GraniteSpeech)}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_adapter(family: str, path: str | Path, **options: Any) -> SpeechLM:
    """Load a speech LLM of `family` from a local folder or a hub id (`from_pretrained`; offline needs the cache).

    options: `SpeechLM.load`'s keywords (dtype float32 | bfloat16 | float16, device cpu | cuda | auto,
    attn_implementation, long_audio reject | window, prompt, device_map), with its defaults.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    local = Path(path).expanduser()
    if not local.exists() and not _HUB_ID.match(str(path)):
        raise FileNotFoundError(f"{family}: model path {str(path)!r} does not exist (and is not a hub id like "
                                "'Qwen/Qwen2-Audio-7B-Instruct')")
    where = str(local) if local.exists() else str(path)
    return FAMILIES[family].load(where, **options)


def load_run(run: ModelRun, device: str | None = None) -> SpeechLM:
    """The adapter of a model run, on `device` (the GPU a job claimed, `modgap.devices.job_device`) or `run.device`
    (neither under a `run.device_map`), asked with the run's prompt."""
    return load_adapter(run.family, run.path, dtype=run.dtype, device=device or run.device,
                        attn_implementation=run.attn_implementation, long_audio=run.long_audio,
                        prompt=Prompt(run.system, run.instruction, run.cue), device_map=run.device_map)
