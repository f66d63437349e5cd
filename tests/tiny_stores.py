"""A states store dumped by the tiny Qwen2-Audio on lab items with noise recordings, for the readout tests."""
from __future__ import annotations

from pathlib import Path

import tiny_models as tiny
from test_interventions import corpus_table

from conftest import defaults
from modgap.corpus.lab_world import generate_lab
from modgap.corpus.table import Row, read_rows
from modgap.models import load_adapter
from modgap.models.base import SpeechLM
from modgap.states.options import StatesOptions
from modgap.states.stage import dump_states
from modgap.states.store import StoreReader


def tiny_store(tmp_path: Path, n_items: int = 3, heatmap_rows: tuple[int, ...] = (), **states: object
               ) -> tuple[list[Row], SpeechLM, StoreReader]:
    """Dump `n_items` lab test items (cloze) with a 4-layer tiny Qwen2-Audio under the states defaults overridden by
    `states` (e.g. readouts=[...], batch_items=2), keeping ragged readout rows for the rows at `heatmap_rows`; the
    rows, the adapter and the store."""
    rows = read_rows(corpus_table(generate_lab(0, 0, 0, n_items)["test"], tmp_path / "audio"))
    adapter = load_adapter("qwen2_audio", str(tiny.build_qwen2_audio(tmp_path / "m", tiny.tiny_tokenizer(), 4)),
                           device="cpu")
    dump_states(adapter, rows, "cloze", tmp_path / "s.zarr", StatesOptions.from_config(defaults("states", **states)),
                "tiny", heatmap_ids=[rows[i].id for i in heatmap_rows])
    return rows, adapter, StoreReader(tmp_path / "s.zarr")
