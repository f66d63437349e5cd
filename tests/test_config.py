"""Config validation: defaults are filled, and every bad value fails with one line naming its key."""
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
    runs = expand_models(cfg["models"], ckpts)
    assert list(runs) == ["lab-full@step5", "lab-full@step10", "big"]
    assert runs["lab-full@step10"].path == "results/lab/full/step10" and runs["lab-full@step10"].lab_strategy == "full"
    assert runs["big"].path == "org/name" and runs["big"].lab_strategy is None and runs["big"].device == "auto"
