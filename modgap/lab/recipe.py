"""Every hyper-parameter of the lab model in one frozen dataclass, with a stable hash; `default` and `smoke`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """How the lab model is built and trained. Steps are optimizer steps; batch sizes count items."""

    seed: int = 0
    threads: int = 1  # torch CPU threads (results are deterministic for a fixed count)
    # model
    text_hidden: int = 128
    text_ffn: int = 384
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    audio_d: int = 128
    audio_ffn: int = 384
    audio_layers: int = 3
    audio_heads: int = 4
    audio_window_s: int = 3  # whole seconds; the encoder always sees the full window
    # phase 1: text LM on the world's text items
    text_items: int = 20000  # items generated from the lab world (same seed) for text pretraining
    text_steps: int = 1200
    text_batch: int = 64
    text_lr: float = 3e-3
    spread_steps: int = 200  # then more steps on a mix where some questions are spread out like audio
    text_spread: float = 0.5  # the fraction of spread questions (data.spread_user) in that mix
    text_answer_weight: float = 1.0  # extra loss weight on the answer turn, on top of the LM loss on every token
    # phase 2: audio encoder with CTC on the words of the spoken question
    ctc_steps: int = 900
    ctc_batch: int = 32
    ctc_lr: float = 2e-3
    projector_fit: bool = True  # phase 2 ends by fitting the projector to the LM input embeddings of CTC's output
    # phase 3: alignment on spoken training questions (answer continuation + transcript)
    align_steps: int = 400
    align_batch: int = 16
    align_lr: float = 1e-3
    lm_lr: float = 2e-4  # strategy "full" only; the LM is frozen otherwise
    transcript_weight: float = 1.0
    replay_weight: float = 1.0  # strategy "full": text LM loss on a replayed text batch
    checkpoints: tuple[int, ...] = (50, 100, 200, 400)
    warmup: float = 0.05  # fraction of each phase's steps
    weight_decay: float = 0.01
    clip: float = 1.0

    def __post_init__(self) -> None:
        if not self.checkpoints or max(self.checkpoints) != self.align_steps:
            raise ValueError(f"recipe: checkpoints {self.checkpoints} must end at align_steps {self.align_steps}")

    def hash(self) -> str:
        """A stable 12-hex-digit digest of every field."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Inverse of `to_dict` (lists become tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


RECIPES: dict[str, Recipe] = {
    "default": Recipe(),
    # The same code path in well under a minute: a smaller model, short phases; text accuracy reaches ~0.5.
    "smoke": Recipe(
        text_hidden=64, text_ffn=192, text_layers=2, text_heads=2, text_kv_heads=1,
        audio_d=64, audio_ffn=128, audio_layers=1, audio_heads=2,
        text_items=3000, text_steps=250, spread_steps=20, text_batch=32, text_lr=4e-3,
        ctc_steps=20, ctc_batch=16, align_steps=10, align_batch=8, checkpoints=(5, 10),
    ),
}


def get_recipe(name: str, **overrides) -> Recipe:
    """A named recipe with field overrides (lists become tuples)."""
    if name not in RECIPES:
        raise ValueError(f"unknown lab recipe {name!r} (known: {', '.join(RECIPES)})")
    return Recipe.from_dict({**RECIPES[name].to_dict(), **overrides})
