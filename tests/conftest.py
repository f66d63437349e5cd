"""Test-wide settings: offline hub, and one torch thread (tiny models; extra threads only spin-wait on 2 shared cores)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


from modgap.config import default_section as defaults  # noqa: E402,F401  (tests import it from here)


import pytest  # noqa: E402

import tiny_models  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    """The tiny models' shared tokenizer (Voxtral builds its own tekken vocabulary)."""
    return tiny_models.tiny_tokenizer()
