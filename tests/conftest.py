"""Test-wide settings: offline hub, and one torch thread (tiny models; extra threads only spin-wait on 2 shared cores)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


from modgap.config import default_section  # noqa: E402


def defaults(section: str, **overrides) -> dict:
    """`default_section` for tests: the states section builds prompts in the main process (`num_workers` 0) unless
    a test asks for workers, since forking workers costs more than a few tiny prompts; test_states.py runs the
    workers path against it, and the smoke study runs the schema default."""
    if section == "states":
        overrides.setdefault("num_workers", 0)
    return default_section(section, **overrides)


import pytest  # noqa: E402

import tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    """The tiny models' shared tokenizer (Voxtral builds its own tekken vocabulary)."""
    return tiny_models.tiny_tokenizer()
