"""Interventions: tensor ops, prompt hooks, the driver (edits, calibration, redundancy) and the report tables, on a
tiny random Qwen2-Audio (and Granite, whose audio runs one prompt per forward) with noise recordings."""
from __future__ import annotations

import dataclasses
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import tiny_models as tiny
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar

from modgap.corpus.items import Item, spoken_text, words_of
from modgap.corpus.lab_world import generate_lab
from conftest import defaults
from modgap.corpus.table import read_rows
from modgap.interventions.conditions import (
    COLUMNS,
    Calibration,
    Edit,
    Redundancy,
    conditions_from_options,
    fit_calibration,
    resolve_layer,
    run_conditions,
    select_edits,
)
from modgap.interventions.controls import CONTROLS
from modgap.interventions.ops import angle_projection, length_normalization, moment_calibration
from modgap.interventions.options import InterventionsOptions
from modgap.interventions.redundancy import redundant_item, repeat_words
from modgap.interventions.report import (
    mcnemar_exact, p1_table, p2_calibration_table, paired_ci, redundancy_lens_table, redundancy_table, summarize,
)
from modgap.models import load_adapter
from modgap.models.hooks import RowEdit, edit_rows, record_rows
from modgap.states import spine
from modgap.states.options import StatesOptions

STYLE = "cloze"


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def corpus_table(items: list[Item], audio_dir) -> pd.DataFrame:
    """A corpus items table (as the corpus stage writes it) with noise recordings of 0.6..1.2 s and even word spans."""
    audio_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    for n, it in enumerate(items):
        seconds = 0.6 + 0.1 * (n % 7)
        wave = (np.random.default_rng(n).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
        path = audio_dir / f"{it.id}.wav"
        sf.write(path, wave, 16000)
        edges = np.linspace(0, seconds * 1000, len(words_of(it.question)) + 1)
        recs.append({"id": it.id, "subject": it.subject, "question": it.question, "choices": it.choices,
                     "answer": it.answer, "audio": str(path), "status": "ok", "start_ms": edges[:-1].tolist(),
                     "end_ms": edges[1:].tolist()})
    return pd.DataFrame(recs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(adapter, evaluated rows, calibration rows) on a tiny Qwen2-Audio with a 4 s window."""
    tmp = tmp_path_factory.mktemp("interventions")
    lab = generate_lab(0, 0, 3, 5)
    rows = read_rows(corpus_table(lab["test"], tmp / "audio"))
    calib = read_rows(corpus_table(lab["calib"], tmp / "audio"))
    path = tiny.build_qwen2_audio(tmp / "model", tiny.tiny_tokenizer(), window_s=4)
    return load_adapter("qwen2_audio", str(path), device="cpu"), rows, calib


@pytest.fixture(scope="module")
def granite(tmp_path_factory):
    return load_adapter("granite_speech", str(tiny.build_granite(tmp_path_factory.mktemp("g"), tiny.tiny_tokenizer())),
                         device="cpu", dtype="float32")


def speech(adapter, rows):
    return [spine.speech_inputs(adapter, r, STYLE) for r in rows]


def prefill_edited(adapter, inputs, layer, edits):
    return spine.forward(adapter, inputs, edit=spine.Edit(layer, edits)).prefills


def prefill_recorded(adapter, inputs, layers):
    fwd = spine.forward(adapter, inputs, span_layers=layers)
    return fwd.prefills, fwd.span


def interventions_options(**overrides) -> InterventionsOptions:
    return InterventionsOptions.from_config(defaults("interventions", **overrides))


def hook_snapshot(model) -> dict:
    return {name: (list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()}


# --- algebra ---------------------------------------------------------------------------------------------------------
def test_angle_projection_keeps_speech_norm_and_takes_text_direction():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(6, 16, generator=g) * 3, torch.randn(6, 16, generator=g)
    out = angle_projection(hs, ht)
    torch.testing.assert_close(out.norm(dim=-1), hs.norm(dim=-1))
    torch.testing.assert_close(_cos(out, ht), torch.ones(6, dtype=torch.float64))
    assert not torch.allclose(_cos(out, hs), torch.ones(6, dtype=torch.float64))


def test_length_normalization_keeps_speech_direction_and_takes_text_norm():
    g = torch.Generator().manual_seed(1)
    hs, ht = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g) * 5
    out = length_normalization(hs, ht)
    torch.testing.assert_close(out.norm(dim=-1), ht.norm(dim=-1))
    torch.testing.assert_close(_cos(out, hs), torch.ones(6, dtype=torch.float64))


def test_zero_norm_guards_leave_speech_unchanged():
    hs, ht = torch.randn(3, 8), torch.randn(3, 8)
    ht[1], hs[2] = 0, 0
    a, n = angle_projection(hs, ht), length_normalization(hs, ht)
    assert torch.isfinite(a).all() and torch.isfinite(n).all()
    assert torch.equal(a[1], hs[1]) and torch.equal(a[2], torch.zeros(8))  # no text direction / zero speech norm
    assert torch.equal(n[2], hs[2])  # no speech direction
    torch.testing.assert_close(n[0].norm(), ht[0].norm())


def test_ops_keep_half_precision_and_are_exact_identities():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(5, 32, generator=g)
    for dtype in (torch.float16, torch.bfloat16):
        x, y = h.to(dtype), torch.randn(5, 32, generator=g).to(dtype)
        assert angle_projection(x, y).dtype == dtype and length_normalization(x, y).dtype == dtype
        assert moment_calibration(x, torch.zeros(32), torch.ones(32), torch.ones(32), torch.ones(32)).dtype == dtype
    mu, sd = h.mean(0) + 0.3, h.std(0) + 0.1
    for x in (h, h.half()):  # identical arguments: bit for bit the input
        assert torch.equal(angle_projection(x, x), x) and torch.equal(length_normalization(x, x), x)
        assert torch.equal(moment_calibration(x, mu, sd, mu, sd), x)
        assert torch.equal(moment_calibration(x, mu.mean(), sd.mean(), mu.mean(), sd.mean()), x)


def test_moment_calibration_gives_target_moments_per_dimension_and_scalar():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(400, 8, generator=g, dtype=torch.float64) * torch.arange(1, 9) + 5).float()
    mu_t, sd_t = torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8)
    out = moment_calibration(x, x.mean(0), x.std(0, correction=0), mu_t, sd_t).double()
    torch.testing.assert_close(out.mean(0), mu_t.double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(0, correction=0), sd_t.double(), atol=1e-5, rtol=1e-5)
    out = moment_calibration(x, x.mean(), x.std(correction=0), torch.tensor(2.0), torch.tensor(0.25)).double()
    assert abs(out.mean() - 2) < 1e-5 and abs(out.std(correction=0) - 0.25) < 1e-5
    assert not torch.allclose(out.std(0, correction=0), torch.full((8,), 0.25, dtype=torch.float64))  # one scale
    const = torch.full((4, 8), 3.0)  # sd_s = 0: shifted only, finite
    out = moment_calibration(const, const.mean(0), torch.zeros(8), torch.ones(8), torch.full((8,), 2.0))
    assert torch.equal(out, torch.ones(4, 8))
    with pytest.raises(ValueError, match="must all be scalars or all"):
        moment_calibration(x, torch.zeros(8), torch.ones(8), torch.tensor(0.0), torch.ones(8))


# --- hooks -----------------------------------------------------------------------------------------------------------
def _baseline(adapter, inputs, items):
    pre = adapter.prefill_batch(inputs)
    return pre, [adapter.score_prefill(p, it, STYLE) for p, it in zip(pre, items)]


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_identity_edits_reproduce_baseline_exactly(setup, layer):
    adapter, rows, _ = setup
    items, s_in = [r.item for r in rows[:3]], speech(adapter, rows[:3])
    base, base_scores = _baseline(adapter, s_in, items)
    mu, sd = torch.randn(adapter.hidden_size), torch.rand(adapter.hidden_size) + 0.5
    identities = [lambda h: h, lambda h: angle_projection(h, h), lambda h: length_normalization(h, h),
                  lambda h: moment_calibration(h, mu, sd, mu, sd)]
    for fn in identities:
        pre = prefill_edited(adapter, s_in, layer, {g: RowEdit(x.span, fn) for g, x in enumerate(s_in)})
        for p, b, it, bs in zip(pre, base, items, base_scores):
            assert torch.equal(p.logprobs, b.logprobs)
            scores = adapter.score_prefill(p, it, STYLE)
            assert scores.pred == bs.pred and np.array_equal(scores.logliks, bs.logliks)


@pytest.mark.parametrize("layer", [0, 1])
def test_an_edit_changes_the_logits_of_its_row_only_and_only_inside_the_context(setup, layer):
    adapter, rows, _ = setup
    items, s_in = [r.item for r in rows[:3]], speech(adapter, rows[:3])
    base, base_scores = _baseline(adapter, s_in, items)
    target = torch.randn(len(s_in[1].span), adapter.hidden_size) * 10
    pre = prefill_edited(adapter, s_in, layer, {1: RowEdit(s_in[1].span, lambda h: angle_projection(h, target))})
    assert not torch.allclose(pre[1].logprobs, base[1].logprobs, atol=1e-3)
    assert not np.allclose(adapter.score_prefill(pre[1], items[1], STYLE).logliks, base_scores[1].logliks, atol=1e-3)
    for r in (0, 2):  # other prompts in the same padded forward are untouched
        torch.testing.assert_close(pre[r].logprobs, base[r].logprobs, rtol=0, atol=1e-5)
    after, after_scores = _baseline(adapter, s_in, items)  # hook gone
    assert all(torch.equal(a.logprobs, b.logprobs) for a, b in zip(after, base))
    assert all(np.array_equal(a.logliks, b.logliks) for a, b in zip(after_scores, base_scores))


def test_an_edit_of_question_positions_at_the_last_layer_cannot_change_the_scores(setup):
    """Why the driver refuses layer L: the logits are read at the last prompt position and the KV caches come from
    layers < L, so the output of the last block at question positions is read by nothing."""
    adapter, rows, _ = setup
    items, s_in = [r.item for r in rows[:2]], speech(adapter, rows[:2])
    base, base_scores = _baseline(adapter, s_in, items)
    pre = prefill_edited(adapter, s_in, 2, {g: RowEdit(x.span, lambda h: h * 100 + 7) for g, x in enumerate(s_in)})
    for p, b, it, bs in zip(pre, base, items, base_scores):
        assert torch.equal(p.logprobs, b.logprobs)
        assert np.array_equal(adapter.score_prefill(p, it, STYLE).logliks, bs.logliks)
    last = {g: RowEdit(torch.tensor([x.model_inputs["input_ids"].shape[1] - 1]), lambda h: h * 100 + 7)
            for g, x in enumerate(s_in)}  # the last prompt position at layer L does reach the logits
    assert not torch.allclose(prefill_edited(adapter, s_in, 2, last)[0].logprobs, base[0].logprobs, atol=1e-3)


def test_hooks_are_removed_after_an_exception(setup):
    adapter, rows, _ = setup
    s_in = speech(adapter, rows[:2])
    adapter.prefill_batch(s_in, hidden=True)  # transformers installs its own output-recording hooks on first use
    before = hook_snapshot(adapter.model)
    for layer in (0, 2):
        with pytest.raises(RuntimeError, match="boom"):
            with edit_rows(adapter, layer, s_in, {0: RowEdit(s_in[0].span, lambda h: h)}):
                assert hook_snapshot(adapter.model) != before
                raise RuntimeError("boom")
        assert hook_snapshot(adapter.model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with record_rows(adapter, [0, 1, 2], s_in, [x.span for x in s_in]):
            adapter.prefill_batch(s_in)
            raise RuntimeError("boom")
    assert hook_snapshot(adapter.model) == before
    with pytest.raises(ValueError, match="returned shape"):  # an edit of the wrong shape fails inside the forward
        prefill_edited(adapter, s_in, 0, {0: RowEdit(s_in[0].span, lambda h: h[:1])})
    assert hook_snapshot(adapter.model) == before


def test_recorded_states_equal_the_prefill_hidden_states(setup, granite):
    adapter, rows, _ = setup
    for a in (adapter, granite):  # Qwen2-Audio: one left-padded forward; Granite: one forward per prompt
        for inputs in (speech(a, rows[:3]), [a.text_inputs(r.item, STYLE) for r in rows[:3]]):
            pre, states = prefill_recorded(a, inputs, [0, 1])
            for x, p, h in zip(inputs, pre, states):
                direct = a.prefill(x, hidden=True)
                assert h.shape == (2, len(x.span), a.hidden_size)
                torch.testing.assert_close(h, direct.hidden[[0, 1]], rtol=0, atol=1e-5)
                torch.testing.assert_close(p.logprobs, direct.logprobs, rtol=0, atol=1e-5)


# --- calibration -----------------------------------------------------------------------------------------------------
def _raw_states(adapter, inputs, layer):
    """Span states at `layer` with a plain torch hook (layer 0: input of block 1, else output of block `layer`)."""
    got = []
    block = adapter.layers[max(layer - 1, 0)]
    if layer == 0:
        handle = block.register_forward_pre_hook(lambda m, args: got.append(args[0]))
    else:
        handle = block.register_forward_hook(lambda m, a, out: got.append(out[0] if isinstance(out, tuple) else out))
    try:
        for x in inputs:
            adapter.prefill(x)
    finally:
        handle.remove()
    return torch.cat([h[0, x.span] for h, x in zip(got, inputs)]).double()


@pytest.mark.parametrize("site", ["input", "output"])
def test_calibration_statistics_come_from_the_calibration_items(setup, site):
    adapter, rows, calib = setup
    layer = {"input": 0, "output": 1}[site]  # "output": the last layer whose edit reaches the answer (L - 1)
    stats = fit_calibration(adapter, calib, STYLE, [site], batch_items=2)[layer]
    assert stats.item_ids == tuple(r.id for r in calib)
    text = [adapter.text_inputs(r.item, STYLE) for r in calib]
    for cond, inputs in (("speech", speech(adapter, calib)), ("text", text)):
        x = _raw_states(adapter, inputs, layer)
        # the hook point's states are the prefill's hidden states 0 and L - 1
        assert torch.allclose(x, torch.cat([adapter.prefill(i, hidden=True).hidden[layer] for i in inputs]).double())
        got = getattr(stats, cond)
        assert got.n == len(x)
        torch.testing.assert_close(got.mean, x.mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(got.std, x.std(0), rtol=1e-6, atol=1e-8)  # sample std (n - 1)
        mu, sd = got.moments("scalar")
        assert abs(mu - x.mean()) < 1e-5 and abs(sd - x.std()) < 1e-5
        torch.testing.assert_close(got.moments("per_dim")[1], x.std(0).float())
    with pytest.raises(ValueError, match=rf"2 item\(s\) are in both: {rows[0].id}, {rows[1].id}"):
        run_conditions(adapter, rows, STYLE, "none", [Calibration(site)], calibration_rows=calib + rows[:2], batch_items=2)
    with pytest.raises(ValueError, match="need calibration_rows"):
        run_conditions(adapter, rows, STYLE, "none", [Calibration(site)], batch_items=2)


def test_repeat_words_repeats_question_words_only():
    assert repeat_words("What is 5, plus ten?", 2) == "What What is is 5 5, plus plus ten ten?"
    assert repeat_words("don't stop", 3) == "don't don't don't stop stop stop"
    item = Item("q", "s", "which one is it", ["the cat", "a dog"], 1)
    rep = redundant_item(item, 2)
    assert rep.choices == item.choices and rep.answer == 1 and rep.id == "q"
    assert words_of(spoken_text(rep, "cloze")) == [w for w in words_of(item.question) for _ in range(2)]
    assert spoken_text(rep, "letter").endswith("A, the cat; B, a dog.")  # options spoken once
    assert redundant_item(item, 1) == item
    with pytest.raises(ValueError, match="integer >= 1"):
        repeat_words("a b", 0)


# --- token selection -------------------------------------------------------------------------------------------------
def test_select_edits_bottom_k_all_and_first_target_wins():
    hs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    ht = torch.tensor([[1.0, 0.5], [1.0, 0.1], [0.2, 1.0], [0.1, 1.0]])  # tokens 0, 1 -> speech 0; 2, 3 -> speech 1
    i, j = select_edits(hs, ht, "all")
    assert i.tolist() == [0, 1] and j.tolist() == [0, 2]  # one target per speech position: the first in text order
    i, j = select_edits(hs, ht, "bottom-2")  # lowest path cosines: tokens 0 (0.89) and 2 (0.98)
    assert i.tolist() == [0, 1] and j.tolist() == [0, 2]
    i, j = select_edits(hs, ht, "bottom-1")
    assert (i.tolist(), j.tolist()) == ([0], [0])
    hs2, ht2 = torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([[0.5, 0.0], [3.0, 0.0], [0.8, 0.0]])
    i, j = select_edits(hs2, ht2, "bottom-1", "l2")  # l2: the largest distance (token 1, 1.0 away) is the worst
    assert (i.tolist(), j.tolist()) == ([1], [1])
    with pytest.raises(ValueError, match="item q7: bottom-k with k=5 but its text span has only 4 tokens"):
        select_edits(hs, ht, "bottom-5", item_id="q7")


# --- the driver ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(setup):
    adapter, rows, calib = setup
    conditions = [Edit("angle", "bottom-3", 0), Edit("length", "all", "output"), Edit("angle", "bottom-2", 1, "l2", 2),
                  Calibration("input"), Calibration("output", "scalar"), Redundancy(1), Redundancy(2)]
    return run_conditions(adapter, rows, STYLE, "none", conditions, calibration_rows=calib, batch_items=2,
                          controls=CONTROLS)


def test_driver_table_and_baselines(setup, table, tmp_path):
    adapter, rows, _ = setup
    assert list(table.columns) == COLUMNS
    table.to_parquet(tmp_path / "t.parquet")  # list and nullable columns survive Parquet
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert back["layer"].dtype == "Int64" and list(back["loglik"].iloc[0]) == table["loglik"].iloc[0]
    assert table.groupby("label").size().eq(len(rows)).all() and table["label"].nunique() == 6 + 3 * 4
    assert set(table["label"]) >= {"S", "T", "angle bottom-3 @0", "length all @1", "angle bottom-2 @1 [l2@2]",
                                   "calibration per_dim @0", "calibration scalar @1", "redundancy r=1",
                                   "angle bottom-3 @0 (random)", "angle bottom-2 @1 [l2@2] (other_item)"}
    assert table.groupby("condition")["control"].unique().map(set).to_dict() == {
        "S": {"none"}, "T": {"none"}, "calibration": {"none"}, "redundancy": {"none"},
        "edit": {"path", "random", "even", "other_item"}}
    for item, x in zip([r.item for r in rows], speech(adapter, rows)):
        for cond, inputs in (("S", x), ("T", adapter.text_inputs(item, STYLE))):
            row = table[(table["label"] == cond) & (table["id"] == item.id)].iloc[0]
            scores = adapter.score(inputs, item, STYLE)
            assert row["prediction"] == scores.pred and row["correct"] == int(scores.pred == item.answer)
            np.testing.assert_allclose(row["loglik"], scores.logliks, rtol=0, atol=1e-4)
    s = table[table["condition"] == "S"].set_index("id")
    for label in ("angle bottom-3 @0", "calibration per_dim @0"):
        sub = table[table["label"] == label].set_index("id")
        assert (sub["baseline_prediction"] == s["prediction"]).all()
        assert (sub["baseline_correct"] == s["correct"]).all()
    edits = table[table["condition"] == "edit"]
    assert edits[edits["select"] == "bottom-3"]["n_edited"].between(1, 3).all()
    sites = table.drop_duplicates("label").set_index("label")["site"]
    assert sites["calibration per_dim @0"] == "input" and sites["calibration scalar @1"] == "output"


def test_redundancy_r1_reproduces_baseline_text_exactly(table):
    base = table[table["label"] == "T"].set_index("id")
    r1 = table[table["label"] == "redundancy r=1"].set_index("id")
    assert (r1["prediction"] == base["prediction"]).all() and (r1["baseline_prediction"] == base["prediction"]).all()
    assert all(a == b for a, b in zip(r1["loglik"], base["loglik"]))
    r2 = table[table["label"] == "redundancy r=2"]
    assert not all(a == b for a, b in zip(r2["loglik"], r2["baseline_loglik"]))


def test_redundancy_rows_record_the_decision_lens_for_each_r(setup, table):
    """Every redundancy row carries [L+1] lens margin and entropy; at layer L the entropy is that of the repeated
    prompt's own next-token distribution (an independent prefill); other rows carry none."""
    adapter, rows, _ = setup
    red = table[table["condition"] == "redundancy"]
    assert sorted(red["r"].unique()) == [1, 2] and table.loc[table["condition"] != "redundancy", "lens_entropy"].isna().all()
    for _, row in red.iterrows():
        assert len(row["lens_margin"]) == len(row["lens_entropy"]) == adapter.n_layers + 1
        item = redundant_item(next(r.item for r in rows if r.id == row["id"]), int(row["r"]))
        logp = adapter.prefill(adapter.text_inputs(item, STYLE)).logprobs
        h = float(-(logp.exp() * logp).sum() / math.log(len(logp)))
        assert row["lens_entropy"][-1] == pytest.approx(h, abs=1e-4)
    lens = redundancy_lens_table({"m": table})
    assert lens.groupby("r").size().to_dict() == {1: adapter.n_layers + 1, 2: adapter.n_layers + 1}
    mean_last = red.groupby("r")["lens_entropy"].apply(lambda v: np.mean([x[-1] for x in v]))
    last = lens[lens["layer"] == adapter.n_layers].set_index("r")
    np.testing.assert_allclose(last["lens_entropy"], mean_last.loc[last.index], rtol=1e-6)
    assert (last["n_items"] == len(rows)).all()


def test_driver_without_edits_and_with_repeated_conditions(setup):
    adapter, rows, _ = setup
    t = run_conditions(adapter, rows[:2], STYLE, "none", [Redundancy(2), Redundancy(2)], batch_items=2)
    assert t["label"].value_counts().to_dict() == {"S": 2, "T": 2, "redundancy r=2": 2}


def test_driver_edit_equals_an_independent_recomputation(setup, table):
    """angle bottom-3 at layer 0 for one item: states from `prefill(hidden=True)`, own cosine path, own torch hook."""
    adapter, rows, _ = setup
    item = rows[3].item
    x = spine.speech_inputs(adapter, rows[3], STYLE)
    hs = adapter.prefill(x, hidden=True).hidden[0].double()
    ht = adapter.prefill(adapter.text_inputs(item, STYLE), hidden=True).hidden[0].double()
    cos = torch.nn.functional.normalize(hs, dim=-1) @ torch.nn.functional.normalize(ht, dim=-1).T  # [Ts, Tt]
    best = cos.argmax(0)
    worst = sorted(np.argsort(cos.max(0).values.numpy(), kind="stable")[:3].tolist())
    targets = {}
    for j in worst:
        targets.setdefault(int(best[j]), j)  # first text token in order wins
    pos = x.span[list(targets)]
    new = angle_projection(hs[list(targets)].float(), ht[list(targets.values())].float())

    def pre(_m, args, kwargs):
        h = args[0].clone()
        h[0, pos] = new
        return (h, *args[1:]), kwargs

    handle = adapter.layers[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        p = adapter.prefill(x)
    finally:
        handle.remove()
    scores = adapter.score_prefill(p, item, STYLE)
    row = table[(table["label"] == "angle bottom-3 @0") & (table["id"] == item.id)].iloc[0]
    assert row["n_edited"] == len(targets)
    np.testing.assert_allclose(row["loglik"], scores.logliks, rtol=0, atol=1e-4)
    assert not np.allclose(row["loglik"], row["baseline_loglik"], atol=1e-4)


def test_a_skipped_item_leaves_every_other_row_unchanged(setup, tmp_path):
    """The second row's recording is garbage: the spine skips it, and every other row, its other-item partner
    included (drawn from the same pool), is scored exactly as in a run without it."""
    adapter, rows, _ = setup
    (tmp_path / "bad.wav").write_bytes(b"not a recording")
    bad = dataclasses.replace(rows[0], item=dataclasses.replace(rows[0].item, id="bad"), audio=str(tmp_path / "bad.wav"))
    pool = [rows[0], bad, *rows[1:]]
    run = lambda r: run_conditions(adapter, r, STYLE, "none", [Edit("angle", "all", 0)], batch_items=1,  # noqa: E731
                                   controls=["other_item"], partner_pool=pool)
    with_bad = run(pool)
    assert "bad" not in set(with_bad["id"]) and with_bad["id"].nunique() == len(rows)
    pd.testing.assert_frame_equal(with_bad, run(rows))


def test_bad_inputs(setup):
    adapter, rows, calib = setup
    with pytest.raises(ValueError, match=r"layer 3 out of range: the model has layers 0\.\.2; edits .* 0\.\.1"):
        run_conditions(adapter, rows, STYLE, "none", [Edit("angle", "all", 3)], batch_items=2)
    with pytest.raises(ValueError, match=r"layer 2 is the output of the last decoder block.*0\.\.1"):
        run_conditions(adapter, rows, STYLE, "none", [Edit("angle", "all", 2)], batch_items=2)
    with pytest.raises(ValueError, match=r"layer 5 out of range"):
        run_conditions(adapter, rows, STYLE, "none", [Edit("angle", "all", 0, select_layer=5)], batch_items=2)
    with pytest.raises(ValueError, match=r"layer -1 out of range"):
        run_conditions(adapter, rows, STYLE, "none", [Calibration(-1)], calibration_rows=calib, batch_items=2)
    short = min(rows, key=lambda r: len(adapter.text_inputs(r.item, STYLE).span)).item
    k = len(adapter.text_inputs(short, STYLE).span) + 1
    with pytest.raises(ValueError, match=rf"k={k} is larger than the text span of item\(s\) .*{short.id}"):
        run_conditions(adapter, rows, STYLE, "none", [Edit("length", f"bottom-{k}", 0)], batch_items=2)
    with pytest.raises(ValueError, match="unknown op 'rotate'"):
        Edit("rotate", "all")
    for select in ("top-3", "bottom-0", "bottom-k"):
        with pytest.raises(ValueError, match="unknown select"):
            Edit("angle", select)
    with pytest.raises(ValueError, match="unknown selection metric"):
        Edit("angle", "all", metric="dot")
    with pytest.raises(ValueError, match="unknown stats_mode"):
        Calibration("input", "per_token")
    with pytest.raises(ValueError, match="integer >= 1"):
        Redundancy(0)
    with pytest.raises(ValueError, match="interventions.layer: unknown"):
        InterventionsOptions.from_config({**defaults("interventions"), "layer": [0]})


def test_integer_layers_out_of_the_model_range_fail_naming_the_key():
    interventions_options(layers=[0, 4, "output"], select_layer=4).check_layers("lab-full@step400", 4)  # in range
    with pytest.raises(ValueError) as e:
        interventions_options(layers=[0, "middle", 99]).check_layers("lab-full@step400", 4)
    assert str(e.value) == "interventions.layers: 99 is out of range for lab-full@step400 (layers 0..4)"
    with pytest.raises(ValueError, match=r"^interventions.select_layer: 5 is out of range for m \(layers 0\.\.4\)$"):
        interventions_options(select_layer=5).check_layers("m", 4)


def test_conditions_from_options_defaults():
    defaults_ = interventions_options()
    assert defaults_.layers == (0, "middle", "output") and defaults_.select_layer is None  # selection at the edit
    assert defaults_.controls == ("random", "even", "other_item") and defaults_.seed == 0
    assert [resolve_layer(l, 4) for l in defaults_.layers] == [0, 2, 3]
    assert {c.layer for c in conditions_from_options(defaults_) if isinstance(c, Edit)} == {0, "middle", "output"}
    conds = conditions_from_options(interventions_options(layers=[0, "output"], k=2))
    edits = [c for c in conds if isinstance(c, Edit)]
    assert len(edits) == 8 and {c.select for c in edits} == {"bottom-2", "all"}
    assert {c.layer for c in edits} == {0, "output"}
    assert [c.layer for c in conds if isinstance(c, Calibration)] == ["input", "output"]
    assert [c.r for c in conds if isinstance(c, Redundancy)] == [1, 2, 4, 8]
    assert conditions_from_options(interventions_options(layers=[0], select=["bottom-3"], ops=["angle"],
                                                         calibration=[], redundancy=[])) == [Edit("angle", "bottom-3", 0)]


# --- report ----------------------------------------------------------------------------------------------------------
def test_mcnemar_counts_and_exact_p_match_statsmodels():
    # both right 10, broken (right -> wrong) 5, fixed (wrong -> right) 12, both wrong 3
    base = np.array([1] * 10 + [1] * 5 + [0] * 12 + [0] * 3)
    new = np.array([1] * 10 + [0] * 5 + [1] * 12 + [0] * 3)
    got = mcnemar_exact(base, new)
    assert (got["both_right"], got["broken"], got["fixed"], got["both_wrong"]) == (10, 5, 12, 3)
    assert got["p_mcnemar"] == pytest.approx(mcnemar([[10, 5], [12, 3]], exact=True).pvalue, rel=1e-12)
    assert got["p_mcnemar"] == pytest.approx(binomtest(5, 17, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact([1, 0], [1, 0])["p_mcnemar"] == 1.0


def _synthetic(acc: dict[str, list[int]]) -> pd.DataFrame:
    """A per-item table with the given correctness per label (4 items each), baselines S / T."""
    spec = {"S": ("S", None, "none", "none", None), "T": ("T", None, "none", "none", None),
            "angle bottom-3 @0": ("edit", 0, "bottom-3", "angle", None),
            "angle all @0": ("edit", 0, "all", "angle", None),
            "length bottom-3 @0": ("edit", 0, "bottom-3", "length", None),
            "length all @0": ("edit", 0, "all", "length", None),
            "calibration per_dim @0": ("calibration", 0, "span", "per_dim", None),
            "calibration per_dim @1": ("calibration", 1, "span", "per_dim", None),
            "redundancy r=1": ("redundancy", None, "none", "repeat", 1),
            "redundancy r=8": ("redundancy", None, "none", "repeat", 8)}
    rows = []
    for label, correct in acc.items():
        cond, layer, select, op, r = spec[label]
        base = acc["T"] if cond in ("T", "redundancy") else acc["S"]
        site = {0: "input", 1: "output", None: "none"}[layer]
        for n, (c, b) in enumerate(zip(correct, base)):
            rows.append({"id": f"i{n}", "condition": cond, "label": label, "layer": layer, "site": site,
                         "control": "path" if cond == "edit" else "none",
                         "select": select, "op": op, "metric": "cos" if cond == "edit" else None,
                         "select_layer": layer if cond == "edit" else None, "r": r, "prediction": c,
                         "correct": c, "baseline_prediction": b, "baseline_correct": b, "n_edited": 1,
                         "merge_ratio": None, "loglik": [0.0], "baseline_loglik": [0.0],
                         "lens_margin": [float(n), float(r)] if cond == "redundancy" else None,  # 2 layers
                         "lens_entropy": [0.1 * r, 0.5] if cond == "redundancy" else None})
    t = pd.DataFrame(rows)[COLUMNS]
    for col in ("layer", "select_layer", "r"):
        t[col] = t[col].astype("Int64")
    return t


def test_report_layouts():
    t = _synthetic({"S": [1, 0, 0, 0], "T": [1, 1, 1, 0], "angle bottom-3 @0": [1, 1, 0, 0],
                    "angle all @0": [0, 1, 1, 1], "length bottom-3 @0": [1, 0, 0, 0], "length all @0": [0, 0, 0, 0],
                    "calibration per_dim @0": [0, 0, 0, 0], "calibration per_dim @1": [1, 1, 0, 0],
                    "redundancy r=1": [1, 1, 1, 0], "redundancy r=8": [0, 1, 0, 0]})
    s = summarize(t).set_index("label")
    row = s.loc["angle all @0"]
    assert (row["n_items"], row["accuracy"], row["baseline_accuracy"], row["delta"]) == (4, 0.75, 0.25, 50.0)
    assert (row["fixed"], row["broken"]) == (3, 1)
    assert row["p_mcnemar"] == pytest.approx(mcnemar([[0, 1], [3, 0]], exact=True).pvalue)
    assert s.loc["T", "delta"] == 0 and s.loc["T", "p_mcnemar"] == 1.0
    p1 = p1_table({"m1": t, "m2": t[t["condition"].isin(["S", "T"])]})
    assert list(p1.columns) == ["text", "speech", "angle bottom-3", "angle all", "length bottom-3", "length all"]
    assert p1.loc["m1"].tolist() == [75.0, 25.0, 50.0, 75.0, 25.0, 0.0]
    assert p1.loc["m2", "text"] == 75.0 and np.isnan(p1.loc["m2", "angle all"])
    p2 = p2_calibration_table({"m1": t})
    assert list(p2.columns) == ["speech", "input calibration", "output calibration", "text"]
    assert p2.loc["m1"].tolist() == [25.0, 0.0, 50.0, 75.0]
    red = redundancy_table({"m1": t})
    assert red[["r", "accuracy", "delta"]].values.tolist() == [[1, 75.0, 0.0], [8, 25.0, -50.0]]
    assert red["n_items"].tolist() == [4, 4] and red.loc[1, "broken"] == 2
    lens = redundancy_lens_table({"m1": t})
    np.testing.assert_allclose(lens[["r", "layer", "lens_margin", "lens_entropy", "n_items"]].to_numpy(float),
                               [[1, 0, 1.5, 0.1, 4], [1, 1, 1.0, 0.5, 4], [8, 0, 1.5, 0.8, 4], [8, 1, 8.0, 0.5, 4]])


def test_stage_shard_skips_calibration_without_a_calib_split_and_gathers_tables(tmp_path, caplog):
    from modgap.interventions.stage import TABLES, gather, run_shard
    from modgap.plan import model_run

    lab = generate_lab(0, 0, 3, 4)
    tables = {}
    for split in ("test", "calib"):
        table = corpus_table(lab[split], tmp_path / "audio").assign(style="cloze")
        table.to_parquet(tables.setdefault(split, tmp_path / f"{split}.parquet"))
    run = model_run("tiny", "qwen2_audio", str(tiny.build_qwen2_audio(tmp_path / "m", tiny.tiny_tokenizer(), 4)),
                    device="cpu", dtype="float32")
    states = StatesOptions.from_config(defaults("states", shard_items=4))
    section = interventions_options(layers=[0], ops=["angle"], select=["all"], calibration=["input"], redundancy=[1],
                                    calib_items=3, batch_items=4)
    with caplog.at_level("WARNING", logger="modgap"):
        without = run_shard(run, tables["test"], None, 0, states, section, tmp_path / "a.parquet")
    assert "calibration skipped" in caplog.text and "calibration" not in set(without["condition"])
    with_calib = run_shard(run, tables["test"], tables["calib"], 0, states, section, tmp_path / "b.parquet")
    assert (with_calib["condition"] == "calibration").sum() == 4
    paths = {name: tmp_path / f"{name}.csv" for name in TABLES}
    paths |= {"items": tmp_path / "items.parquet", "markdown": tmp_path / "tables.md"}
    out = gather({"tiny": [str(tmp_path / "b.parquet")]}, paths, k=3, stats_mode="per_dim")
    assert {"speech", "text", "calib-input", "angle all @0", "redundancy-r1", "angle all @0 (random)",
            "angle all @0 (even)", "angle all @0 (other_item)"} == set(out["conditions"]["condition"])
    assert out["controls"][["model", "condition", "n_items"]].values.tolist() == [["tiny", "angle all @0", 4]]
    assert (tmp_path / "controls.csv").is_file()
    assert (tmp_path / "tables.md").is_file() and list(out["p1_table"]["model"]) == ["tiny"]


def test_paired_interval_equals_the_wald_interval_of_per_item_differences():
    fixed, broken, n = 12, 5, 30
    diff = np.r_[np.ones(fixed), -np.ones(broken), np.zeros(n - fixed - broken)]  # per item: after - before
    se = diff.std() / np.sqrt(n)  # population sd of the paired differences
    lo, hi = paired_ci(fixed, broken, n)
    assert lo == pytest.approx(100 * (diff.mean() - 1.959964 * se)) and hi == pytest.approx(100 * (diff.mean() + 1.959964 * se))
    assert lo < 100 * (fixed - broken) / n < hi and paired_ci(0, 0, n) == (0.0, 0.0)
