"""What the states and later rules run, derived from the validated config: model runs and item shards."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from modgap.checkpoints import parse_model
from modgap.config import PROMPT_KEYS, validate_config
from modgap.paths import LAB, SHIPPED


@dataclass(frozen=True)
class ModelRun:
    """One model the workflow runs: a config entry, or one lab checkpoint of an entry with `lab`.

    system, instruction ({style: text or None}) and cue: what surrounds the question (`modgap.models.Prompt`); the
    bare chat template when left out, as the lab model is trained.
    """

    name: str
    family: str
    path: str
    dtype: str
    device: str
    attn_implementation: str | None
    long_audio: str
    device_map: str | None
    lab_strategy: str | None = None
    system: str | None = None
    instruction: dict[str, str | None] = field(default_factory=dict)
    cue: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def expand_models(models: dict, prompts: dict, lab_checkpoints: dict[str, str]) -> dict[str, ModelRun]:
    """{name: ModelRun} of a validated `models` config. An entry with `lab: [strategies]` becomes every checkpoint
    `lab-<strategy>@step<N>` of those strategies (`lab_checkpoints` maps such names to folders), asked with the bare
    prompt it is trained on; any other entry is one run named by its key, asked with its family's prompt
    (`prompts[family]`) where it sets no system, instruction or cue of its own."""
    runs: dict[str, ModelRun] = {}
    for key, spec in models.items():
        options = {k: spec[k] for k in ("family", "dtype", "device", "attn_implementation", "long_audio", "device_map")}
        if "lab" not in spec:
            prompt = {k: spec.get(k, prompts[spec["family"]][k]) for k in PROMPT_KEYS}
            runs[key] = ModelRun(key, path=spec["path"], **options, **prompt)
            continue
        for name, folder in lab_checkpoints.items():
            strategy = parse_model(name).strategy
            if strategy in spec["lab"]:
                runs[name] = ModelRun(name, path=folder, lab_strategy=strategy, **options)
    return runs


def model_run(name: str, family: str, path: str, **entry: object) -> ModelRun:
    """The run of one `models` entry {family, path, **entry} with its schema defaults and its family's prompt
    filled in, as the workflow would build it (for library callers: tests, benchmarks)."""
    cfg = validate_config({"datasets": {"lab": {"source": "lab"}},
                           "models": {name: {"family": family, "path": path, **entry}}})
    return expand_models(cfg["models"], cfg["prompts"], {})[name]


def shard_rows(n_items: int, shard_items: int, max_items: int | None, shard: int) -> slice:
    """The table rows of shard `shard`: the first `max_items` (default all) of `n_items` rows cut into shards of
    `shard_items`. The one definition of shard membership (`shard_count` counts these)."""
    n = n_items if max_items is None else min(n_items, max_items)
    if not 0 <= shard * shard_items < max(n, 1):
        raise ValueError(f"shard {shard} is empty: {n} items in shards of {shard_items}")
    return slice(shard * shard_items, min((shard + 1) * shard_items, n))


def shard_count(n_items: int, shard_items: int, max_items: int | None = None) -> int:
    """Number of shards `shard_rows` cuts the first `max_items` (default all) of `n_items` items into."""
    n = n_items if max_items is None else min(n_items, max_items)
    return max(1, math.ceil(n / shard_items))


def hidden_size(run: ModelRun) -> tuple[int, int] | None:
    """(decoder layers, hidden size) from the run's config.json, or None when it is not on disk (hub ids).

    A lab checkpoint not trained yet is looked up among the shipped ones (SHIPPED/<strategy>/step<N>).
    """
    folders = [Path(run.path)]
    if run.lab_strategy:
        folders.append(Path(SHIPPED) / Path(run.path).relative_to(LAB))
    for folder in folders:
        if (folder / "config.json").is_file():
            cfg = json.loads((folder / "config.json").read_text())
            text = cfg.get("text_config") or cfg.get("thinker_config", {}).get("text_config") or cfg
            return int(text["num_hidden_layers"]), int(text["hidden_size"])
    return None


# Span lengths assumed when the corpus is not built yet: cloze questions ~2 s and ~8 tokens, letter items (question and
# spoken choices) ~10 s and ~40 tokens; 25 speech positions per second (Qwen2-Audio, Qwen2.5-Omni).
ASSUMED_SPANS = {"cloze": (50.0, 8.0), "letter": (250.0, 40.0)}


def mean_spans(table: str | Path, style: str) -> tuple[float, float]:
    """(speech positions, text tokens) per item: measured from a corpus items table when it exists (25 positions/s,
    1.3 tokens per word), else ASSUMED_SPANS."""
    if not Path(table).is_file():
        return ASSUMED_SPANS[style]
    df = pd.read_parquet(table, columns=["duration_ms", "words"])
    return float(df["duration_ms"].mean() / 40.0), float(1.3 * df["words"].map(len).mean())


def storage_report(runs: dict[str, ModelRun], datasets: dict[str, tuple[int, str]], states: dict) -> list[str]:
    """Lines of a storage estimate: per model and dataset (items, corpus table, style), bytes on disk of all shards."""
    from modgap.states.store import estimate_bytes  # zarr and torch: only for a dry run's estimate, not every parse

    lines, total = [], 0
    for name, run in runs.items():
        size = hidden_size(run)
        for dataset, (n_items, table, style) in datasets.items():
            if size is None:
                lines.append(f"  {name} / {dataset}: unknown (model config not on disk)")
                continue
            n_layers, d = size
            layers = list(range(n_layers + 1)) if states["layers"] == "all" else states["layers"]
            n = n_items if states["max_items"] is None else min(n_items, states["max_items"])
            pos_s, pos_t = mean_spans(table, style)
            b = estimate_bytes(n, pos_s, pos_t, layers, d, states["dtype"], states["bitround_bits"])
            total += b
            lines.append(f"  {name} / {dataset}: {n} items x {len(layers)} layers x d={d}: {b / 2**20:,.1f} MiB")
    return [f"modgap: hidden-state storage estimate {total / 2**30:,.2f} GiB", *lines]
