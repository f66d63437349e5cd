"""Config validation against workflow/schemas/config.schema.yaml, with defaults and one-line errors."""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml
from jsonschema.exceptions import best_match

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
FILE_SOURCES = {"jsonl", "voicebench", "speechmmlu"}
NATIVE_SOURCES = {"voicebench", "speechmmlu"}
PROMPT_KEYS = ("system", "instruction", "cue")  # a model entry's own prompt keys, overriding `prompts.<family>`


class ConfigError(ValueError):
    """A bad config value; the message names the key."""


def _with_defaults(cls):
    """A validator class that fills each property's schema `default` before validating it."""
    validate_properties = cls.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from validate_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": properties})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"config key {_key([*error.absolute_path, extra[0]])}: unknown key{hint}"
    return f"config key {_key(error.absolute_path)}: {error.message}"


def validate_config(config: dict, root: str | Path = ".") -> dict:
    """Return a validated deep copy of `config` with every default filled in.

    Raises ConfigError with a one-line message naming the offending key.
    """
    cfg = copy.deepcopy(config)
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    error = best_match(_Validator(schema).iter_errors(cfg))
    if error is not None:
        raise ConfigError(_message(error))
    for name, spec in cfg["datasets"].items():
        _check_dataset(name, spec, Path(root))
    for name, spec in cfg["models"].items():
        _check_model(name, spec, cfg["lab"]["strategies"])
    if cfg["lab"]["dataset"] not in cfg["datasets"] and any("lab" in m for m in cfg["models"].values()):
        raise ConfigError(f"config key lab.dataset: {cfg['lab']['dataset']!r} is not in datasets")
    for name in cfg["states"]["datasets"] or []:
        if name not in cfg["datasets"]:
            raise ConfigError(f"config key states.datasets: {name!r} is not in datasets")
    run = cfg["states"]["datasets"] or list(cfg["datasets"])
    for suite, names in cfg["suites"].items():
        if missing := [n for n in names if n not in run]:
            raise ConfigError(f"config key suites.{suite}: {missing} not among the datasets the states stage runs")
    if cfg["probes"]["enabled"] and "decision" not in cfg["states"]["readouts"]:
        raise ConfigError("config key probes.enabled: the probes read the decision readout; "
                          "add decision to states.readouts")
    return cfg


def _check_model(name: str, spec: dict, lab_strategies: list[str]) -> None:
    key = f"models.{name}"
    if "lab" in spec:
        if "path" in spec:
            raise ConfigError(f"config key {key}.path: not used with `lab` (checkpoints come from the lab stage)")
        if prompt := [k for k in PROMPT_KEYS if k in spec]:
            raise ConfigError(f"config key {key}.{prompt[0]}: not used with `lab` (the lab model is trained and "
                              "asked with the bare chat template)")
        if missing := sorted(set(spec["lab"]) - set(lab_strategies)):
            raise ConfigError(f"config key {key}.lab: strategies {missing} are not in lab.strategies")
    elif "path" not in spec:
        raise ConfigError(f"config key {key}.path: required (a local folder or a hub id)")


def _check_dataset(name: str, spec: dict, root: Path) -> None:
    key = f"datasets.{name}"
    spec.setdefault("audio", "native" if spec["source"] in NATIVE_SOURCES else "tts")
    if spec["source"] not in NATIVE_SOURCES:
        for extra in ("subset", "split"):
            if extra in spec:
                raise ConfigError(f"config key {key}.{extra}: only for sources {', '.join(sorted(NATIVE_SOURCES))}")
    if spec["source"] in FILE_SOURCES:
        if "path" not in spec:
            raise ConfigError(f"config key {key}.path: required for source {spec['source']!r}")
        local = root / spec["path"]
        hub_id = spec["source"] in NATIVE_SOURCES and not local.suffix and spec["path"].count("/") == 1
        if not (local.is_file() or (spec["source"] in NATIVE_SOURCES and local.is_dir()) or hub_id):
            raise ConfigError(f"config key {key}.path: file not found: {spec['path']}")
        if spec["splits"] != ["test"]:
            raise ConfigError(f"config key {key}.splits: source {spec['source']!r} has only the 'test' split")
    elif "path" in spec:
        raise ConfigError(f"config key {key}.path: not used by source 'lab'")


def default_section(section: str, **overrides) -> dict:
    """One config section with every schema default filled in, then `overrides` (a dict value merges one level
    deep), as library callers outside the workflow (tests, benchmarks) need it."""
    cfg = validate_config({"datasets": {"lab": {"source": "lab"}}})[section]
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return validate_config({"datasets": {"lab": {"source": "lab"}}, section: cfg})[section]
