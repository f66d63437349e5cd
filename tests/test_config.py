"""Config validation: defaults are filled, and every bad value fails with one line naming its key."""
from pathlib import Path

import pytest

from modgap.config import ConfigError, validate_config

LAB = {"lab": {"source": "lab"}}


def test_defaults_are_filled_and_input_untouched():
    raw = {"datasets": {"lab": {"source": "lab", "seed": 3}}}
    cfg = validate_config(raw)
    assert raw == {"datasets": {"lab": {"source": "lab", "seed": 3}}}
    assert cfg["datasets"]["lab"]["seed"] == 3
    assert cfg["datasets"]["lab"]["style"] == "letter"
    assert cfg["datasets"]["lab"]["audio"] == "tts"
    assert cfg["tts"]["rate"] == 175 and cfg["tts"]["voices"]["test"] == ["en-us"]
    assert cfg["align"]["beam"] == 1e-200 and cfg["align"]["asr_gate"]["engine"] is None
    assert cfg["states"]["scoring"] == "loglik" and cfg["suites"] == {}
    assert cfg["states"]["decoding"] == {"greedy": True, "max_new_tokens": 2048, "repetition_penalty": 1.0}


@pytest.mark.parametrize(
    "config, key",
    [
        ({"datasets": {"lab": {"source": "lab", "seed": "x"}}}, "datasets.lab.seed"),
        ({"datasets": LAB, "tts": {"ratez": 3}}, "tts.ratez"),
        ({"datasets": LAB, "tts": {"voices": {"test": []}}}, "tts.voices.test"),
        ({"datasets": LAB, "tts": {"rate": 10}}, "tts.rate"),
        ({"datasets": {"lab": {"source": "labx"}}}, "datasets.lab.source"),
        ({"datasets": {"b": {"source": "jsonl"}}}, "datasets.b.path"),
        ({"datasets": {"b": {"source": "jsonl", "path": "missing.jsonl"}}}, "datasets.b.path"),
        ({"datasets": {"lab": {"source": "lab", "path": "x"}}}, "datasets.lab.path"),
        ({}, "datasets"),
        ({"datasets": LAB, "states": {"scoring": "sample"}}, "states.scoring"),
        ({"datasets": LAB, "states": {"decoding": {"greedy": False}}}, "states.decoding.greedy"),
        ({"datasets": LAB, "states": {"decoding": {"max_new_tokens": 0}}}, "states.decoding.max_new_tokens"),
        ({"datasets": LAB, "suites": {"vb": ["lab", "sd-qa"]}}, "suites.vb"),
        ({"datasets": LAB, "suites": {"vb": []}}, "suites.vb"),
        ({"datasets": LAB, "probes": {"enabled": True}}, "probes.enabled"),  # without the decision readout
        ({"datasets": LAB, "probes": {"folds": 1}}, "probes.folds"),
    ],
)
def test_bad_config_names_the_key(config, key, tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_config(config, root=tmp_path)
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_file_dataset_only_has_test_split(tmp_path):
    (tmp_path / "b.jsonl").write_text("")
    spec = {"source": "jsonl", "path": "b.jsonl", "splits": ["train"]}
    with pytest.raises(ConfigError, match="datasets.b.splits"):
        validate_config({"datasets": {"b": spec}}, root=tmp_path)
    spec["splits"] = ["test"]
    assert validate_config({"datasets": {"b": spec}}, root=tmp_path)["datasets"]["b"]["audio"] == "tts"


@pytest.mark.parametrize(
    "models, key",
    [
        ({"m": {"family": "qwen2_audio"}}, "models.m.path"),
        ({"m": {"family": "qwen2_audio", "lab": ["frozen"], "path": "x"}}, "models.m.path"),
        ({"m": {"family": "gpt", "path": "x"}}, "models.m.family"),
        ({"m": {"family": "qwen2_audio", "path": "x", "dtype": "int8"}}, "models.m.dtype"),
        ({"m": {"family": "qwen2_audio", "lab": ["frozen"], "cue": "A:"}}, "models.m.cue"),
        ({"m": {"family": "voxtral", "path": "x", "instruction": {"open": "Say it."}}}, "models.m.instruction"),
    ],
)
def test_bad_model_entries_name_the_key(models, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config({"datasets": LAB, "models": models})


def test_lab_strategies_must_be_trained():
    cfg = {"datasets": LAB, "lab": {"strategies": ["full"]}, "models": {"lab": {"family": "qwen2_audio", "lab": ["frozen"]}}}
    with pytest.raises(ConfigError, match=r"models\.lab\.lab: strategies \['frozen'\]"):
        validate_config(cfg)


def test_expand_models_names_every_lab_checkpoint():
    from modgap.plan import expand_models

    cfg = validate_config({"datasets": LAB, "models": {
        "lab": {"family": "qwen2_audio", "lab": ["full"]}, "big": {"family": "voxtral", "path": "org/name"}}})
    ckpts = {"lab-frozen@step5": "results/lab/frozen/step5", "lab-full@step5": "results/lab/full/step5",
             "lab-full@step10": "results/lab/full/step10"}
    runs = expand_models(cfg["models"], cfg["prompts"], ckpts)
    assert list(runs) == ["lab-full@step5", "lab-full@step10", "big"]
    assert runs["lab-full@step10"].path == "results/lab/full/step10" and runs["lab-full@step10"].lab_strategy == "full"
    assert runs["big"].path == "org/name" and runs["big"].lab_strategy is None and runs["big"].device == "auto"


def test_prompts_default_per_family_and_entries_override_them():
    from modgap.plan import expand_models

    models = {
        "lab": {"family": "qwen2_audio", "lab": ["full"]},
        "qwen": {"family": "qwen2_audio", "path": "org/qwen"},
        "omni": {"family": "qwen2_5_omni", "path": "org/omni"},
        "vox": {"family": "voxtral", "path": "org/vox", "cue": "Answer:"},
        "granite": {"family": "granite_speech", "path": "org/granite", "system": None, "instruction": {}},
    }
    cfg = validate_config({"datasets": LAB, "models": models})
    runs = expand_models(cfg["models"], cfg["prompts"], {"lab-full@step5": "results/lab/full/step5"})
    letter = "\nAnswer with the option's letter from the given choices directly."
    # the lab model: the bare chat template it is trained on, in float32 only where its entry says so
    lab = runs["lab-full@step5"]
    assert (lab.system, lab.instruction, lab.cue, lab.dtype) == (None, {}, "", "bfloat16")
    assert (runs["qwen"].system, runs["qwen"].instruction, runs["qwen"].cue) == (None, {"letter": letter, "cloze": None}, "")
    assert runs["omni"].system.startswith("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group")
    assert (runs["vox"].system, runs["vox"].cue, runs["vox"].instruction["letter"]) == (None, "Answer:", letter)
    assert runs["granite"].system is None and runs["granite"].instruction == {}  # an explicit null overrides
    assert cfg["prompts"]["granite_speech"]["system"].startswith("Knowledge Cutoff Date: April 2024.\nToday's Date: ")
    assert all(r.device_map is None for r in runs.values())
    # a study-level change of one family's prompt leaves the other families' defaults in place
    cfg = validate_config({"datasets": LAB, "models": models,
                           "prompts": {"voxtral": {"system": "Be brief.", "instruction": {}, "cue": ""}}})
    runs = expand_models(cfg["models"], cfg["prompts"], {})
    assert runs["vox"].system == "Be brief." and runs["vox"].cue == "Answer:"
    assert runs["omni"].system.startswith("You are Qwen")


def test_the_embedded_study_runs_the_lab_model_in_float32():
    import yaml

    from modgap.plan import expand_models

    cfg = validate_config(yaml.safe_load(open(Path(__file__).parent.parent / "config.yaml")))
    runs = expand_models(cfg["models"], cfg["prompts"], {"lab-full@step5": "x"})
    assert runs["lab-full@step5"].dtype == "float32" and runs["lab-full@step5"].system is None
