"""Probes of the gold option on decision-position states: known answers on constructed states, the stored
`decision_state` field against the model's own states, and the driver on a tiny store."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from tiny_stores import tiny_store

from conftest import defaults
from modgap.metrics.probes import (CONDITIONS, PROBES, ProbesOptions, held_out_predictions, make_probe, probe_table,
                                   run_probes)
from modgap.states import spine
from modgap.states.store import CondBatch, StoreWriter

OPTIONS = ProbesOptions.from_config(defaults("probes"))
N, LAYERS, D = 200, 2, 4


def separable_states(g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[N, LAYERS, D] states and [N] balanced binary labels: layer 0 is noise, layer 1 puts the label's sign on
    feature 0 with a margin of 2 (linearly separable) over unit noise elsewhere."""
    labels = np.arange(N) % 2
    states = g.standard_normal((N, LAYERS, D))
    states[:, 1, 0] = (2 * labels - 1) * (2 + g.random(N))
    return states, labels


def test_separable_layer_is_read_and_control_sits_at_chance():
    """Layer 1 is linearly separable: both probes reach >= 0.99 and T->S transfers (S = T here). Every control, and
    layer 0 (pure noise), sits at chance 0.5: with N = 200 held-out predictions the binomial SD is 0.035, so a
    tolerance of 0.15 (4.2 SD) keeps a false failure below 1e-4 per value while a probe that leaked the labels
    (>= 0.99) or the states (about 1 on layer 1) fails."""
    states, labels = separable_states(np.random.default_rng(0))
    subsets = {"all": np.ones(N, bool), "odd": labels == 1}
    t = probe_table({"S": states, "T": states}, labels, np.array([f"q{i}" for i in range(N)]), subsets, OPTIONS)
    assert len(t) == LAYERS * len(PROBES) * len(CONDITIONS) * len(subsets)
    read = t[(t.layer == 1) & (t.subset == "all")]
    assert (read.accuracy >= 0.99).all() and set(read.condition) == set(CONDITIONS)
    assert t.control_accuracy[t.subset == "all"].sub(0.5).abs().max() < 0.15
    assert t.accuracy[(t.layer == 0) & (t.subset == "all")].sub(0.5).abs().max() < 0.15
    assert (read.selectivity > 0.35).all()
    assert (t.n_items[t.subset == "odd"] == N // 2).all()


def test_cross_validation_never_scores_a_fitted_item():
    """Random labels on states that identify each item (one-hot): a probe that saw the scored item would recall its
    label; held out by item, it can only guess (chance 0.5 within the 0.15 of the test above, n = 200)."""
    labels = np.random.default_rng(1).integers(0, 2, N)
    states = np.eye(N)
    groups = np.arange(N)
    pred = held_out_predictions("linear", states, {"S": states}, labels, groups, OPTIONS)["S"]
    assert abs(np.mean(pred == labels) - 0.5) < 0.15
    fitted = make_probe("linear", OPTIONS).fit(states, labels).predict(states)  # the check can fail: seen items
    assert np.mean(fitted == labels) > 0.95


def test_decision_state_is_the_hook_point_state_at_the_last_position(tmp_path):
    """The stored field equals spine.forward(decision=True)'s states, and the model's own hidden states at the
    prompt's last position: output_hidden_states for layers < L, and at L after the final norm (which
    output_hidden_states applies to its last state)."""
    rows, adapter, store = tiny_store(tmp_path, batch_items=2, readouts=["decision"])
    L, d = adapter.n_layers, adapter.hidden_size
    assert store.readout_fields == {"decision_state": (L + 1, d)}
    for cond in ("S", "T"):
        stored = store.readout(cond, "decision_state")
        inputs = spine.condition_inputs(adapter, rows, "cloze", cond)
        recorded = spine.forward(adapter, inputs, decision=True).decision
        np.testing.assert_allclose(stored, recorded.float().numpy(), atol=1e-5)
        for n, x in enumerate(inputs):
            last = dataclasses.replace(x, span=torch.tensor([x.model_inputs["input_ids"].shape[1] - 1]))
            own = adapter.prefill(last, hidden=True).hidden[:, 0].float()  # [L+1, d]
            np.testing.assert_allclose(stored[n, :L], own[:L].numpy(), atol=1e-4)
            with torch.no_grad():
                normed = adapter.final_norm(torch.from_numpy(stored[n, L]).to(adapter.model.dtype)).float()
            np.testing.assert_allclose(normed.numpy(), own[L].numpy(), atol=1e-4)


def write_store(path, states: np.ndarray, ids: list[str], correct: dict[str, np.ndarray]) -> str:
    """A store of [n, layers, d] decision states (the same in S and T) with one hidden position per item."""
    n, layers, d = states.shape
    with StoreWriter(path, model="m", layers=[0], d=d, n_options=2, dtype="float32",
                     readouts={"decision_state": (layers, d)}) as w:
        for i in range(n):
            w.append([ids[i]], {c: CondBatch(torch.zeros(1, 1, d), [1], [0], [0], [correct[c][i]],
                                             readouts={"decision_state": states[i : i + 1]}) for c in ("S", "T")})
    return str(path)


def test_driver_on_tiny_stores(tmp_path):
    """Two shards of separable states and a corpus table with gold options (one open item, left out): the CSV has
    the labels, every layer, condition, probe and subset, the separable layer read, and the subset sizes."""
    states, labels = separable_states(np.random.default_rng(2))
    ids = [f"q{i}" for i in range(N)]
    correct = {"T": np.ones(N, int), "S": (np.arange(N) % 4 != 0).astype(int)}  # every 4th: text right, speech wrong
    half = N // 2
    stores = [write_store(tmp_path / f"s{k}.zarr", states[sl], ids[sl], {c: v[sl] for c, v in correct.items()})
              for k, sl in enumerate([slice(0, half), slice(half, N)])]
    table = pd.DataFrame({"id": ids, "choices": [["a", "b"]] * (N - 1) + [[]], "answer": [*labels[:-1], -1]})
    table.to_parquet(tmp_path / "table.parquet")
    out = run_probes(stores, tmp_path / "table.parquet", OPTIONS, {"model": "m", "dataset": "d", "voice": "v"},
                     tmp_path / "probes.csv")
    written = pd.read_csv(tmp_path / "probes.csv")
    assert list(written.columns[:3]) == ["model", "dataset", "voice"] and len(written) == len(out)
    assert set(written.subset) == {"all", "text_right_speech_wrong"} and set(written.layer) == {0, 1}
    assert (written.n_items[written.subset == "all"] == N - 1).all()
    assert (written.n_items[written.subset == "text_right_speech_wrong"] == N // 4).all()
    assert (written.accuracy[(written.layer == 1) & (written.subset == "all")] >= 0.99).all()


def test_figure_draws_each_condition_and_its_control():
    """Two models: a 2 x 2 grid, each panel with 3 accuracy and 3 dashed control lines over the table's layers; an
    empty table (an open task) draws a note instead."""
    from modgap.plots import probe_curves

    grid = pd.MultiIndex.from_product([["m1", "m2"], range(3), list(CONDITIONS), PROBES, ["all"]],
                                      names=["model", "layer", "condition", "probe", "subset"]).to_frame(index=False)
    fig = probe_curves(grid.assign(accuracy=0.9, control_accuracy=0.5))
    panels = [ax for ax in fig.axes if ax.lines]
    assert len(panels) == 4
    for ax in panels:
        assert sorted(line.get_linestyle() for line in ax.lines) == ["-"] * 3 + ["--"] * 3
        assert all(list(line.get_xdata()) == [0, 1, 2] for line in ax.lines)
        assert {float(line.get_ydata()[0]) for line in ax.lines} == {0.9, 0.5}
    assert not probe_curves(grid.iloc[:0].assign(accuracy=[], control_accuracy=[])).axes
