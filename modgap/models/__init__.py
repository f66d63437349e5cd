"""Speech LLM adapters: one interface (`SpeechLM`) for building S/T inputs, spans, hidden states, hooks and scoring."""
from modgap.models.base import (
    Inputs,
    LongAudioError,
    Prefill,
    Prompt,
    Scores,
    SpeechLM,
    extract_answer,
    option_texts,
    positions_to_words,
)
from modgap.models.registry import FAMILIES, load_adapter, load_run

__all__ = [
    "FAMILIES", "Inputs", "LongAudioError", "Prefill", "Prompt", "Scores", "SpeechLM", "extract_answer",
    "load_adapter", "load_run", "option_texts", "positions_to_words",
]
