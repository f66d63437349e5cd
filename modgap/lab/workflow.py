"""What the lab rules need from the validated config: recipe, training-data spec, tables, checkpoint names."""
from __future__ import annotations

from dataclasses import dataclass

from modgap.lab.fingerprint import checkpoint_name, fingerprint, shipped_fingerprint
from modgap.lab.recipe import Recipe, get_recipe
from modgap.paths import CORPUS_TABLE, LAB, SHIPPED


@dataclass(frozen=True)
class LabPlan:
    """Everything the lab stage's rules are parameterised by."""

    recipe: Recipe
    data_spec: dict
    world_seed: int
    strategies: list[str]
    train_tables: list[str]
    test_table: str
    shipped: bool

    @property
    def checkpoints(self) -> dict[str, str]:
        """{name: folder}, e.g. {"lab-frozen@step400": "results/lab/frozen/step400"}."""
        return {
            checkpoint_name(s, n): f"{LAB}/{s}/step{n}" for s in self.strategies for n in self.recipe.checkpoints
        }


def lab_plan(config: dict, root: str = ".") -> LabPlan | None:
    """The lab plan of a validated config (keys under `lab`; the dataset must be a voiced `lab` source), or None when
    no model entry is a lab model (a study of released checkpoints only: no lab rule runs)."""
    if not any("lab" in spec for spec in config["models"].values()):
        return None
    lab = config["lab"]
    name = lab["dataset"]
    spec = config["datasets"][name]
    if spec["source"] != "lab" or "train" not in spec["splits"] or "test" not in spec["splits"]:
        raise ValueError(f"lab.dataset {name!r}: needs a lab-source dataset with train and test splits")
    tts = config["tts"]
    train_voices, test_voice = tts["voices"]["train"], tts["voices"]["test"][0]
    if test_voice in train_voices:
        raise ValueError(f"lab: test voice {test_voice!r} is also a training voice; pick an unseen one")
    recipe = get_recipe(lab["recipe"], **lab["overrides"])
    data_spec = {
        "world_seed": spec["seed"], "n_train": spec["n_train"], "n_choices": spec["n_choices"],
        "style": spec["style"], "voices": list(train_voices), "rate": tts["rates"].get("train", tts["rate"]),
        "pitch": tts["pitch"],
    }
    source = lab["source"]
    shipped = source == "shipped" or (
        source == "auto" and shipped_fingerprint(f"{root}/{SHIPPED}") == fingerprint(recipe, data_spec)
    )
    return LabPlan(
        recipe=recipe,
        data_spec=data_spec,
        world_seed=spec["seed"],
        strategies=list(lab["strategies"]),
        train_tables=[CORPUS_TABLE.format(dataset=name, split="train", voice=v) for v in train_voices],
        test_table=CORPUS_TABLE.format(dataset=name, split="test", voice=test_voice),
        shipped=shipped,
    )
