"""Typed stage options: each stage's frozen dataclass is built once from its validated config section.

The schema (`workflow/schemas/config.schema.yaml`) is the only place a default is written: `validate_config` fills
every default, and `build` refuses a section that lacks a field or has one the dataclass does not know. Lists
become tuples; a field typed as another options dataclass is built from its sub-section.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


def _value(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return build(hint, value, key)
    if isinstance(value, list):
        return tuple(value)
    return value


def build(cls: type[T], section: Mapping[str, Any], key: str) -> T:
    """`cls` from config section `key` (e.g. "metrics"); ValueError naming a missing or unknown key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if unknown := sorted(set(section) - set(names)):
        raise ValueError(f"config key {key}.{unknown[0]}: unknown to the {cls.__name__} options")
    if missing := [n for n in names if n not in section]:
        raise ValueError(f"config key {key}.{missing[0]}: missing (validate the config first: the schema fills it)")
    return cls(**{n: _value(hints[n], section[n], f"{key}.{n}") for n in names})


def as_dict(options: Any) -> dict:
    """Plain-JSON form of an options dataclass (tuples as lists), for metadata and fingerprints."""
    def plain(x: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(options))


def check_layer(key: str, layer: int, model: str, n_layers: int) -> int:
    """`layer` when it is a hidden state of `model`, which has `n_layers` decoder blocks (0 = input embeddings ..
    n_layers); a one-line ValueError naming the config key, the model and its range otherwise."""
    if not 0 <= layer <= n_layers:
        raise ValueError(f"{key}: {layer} is out of range for {model} (layers 0..{n_layers})")
    return layer


class StageOptions:
    """Base of the stage options dataclasses; `section` names the config section they are built from."""

    section: ClassVar[str]

    @classmethod
    def from_config(cls: type[T], section: Mapping[str, Any]) -> T:
        """The options from their validated config section."""
        return build(cls, section, cls.section)
