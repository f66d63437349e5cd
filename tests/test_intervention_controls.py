"""Control edit sites: random and even positions, other-item targets, identity edits bit for bit (on states, through
the hooks and through `run_conditions`), determinism given the seed, and the path-minus-random effect table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny_models as tiny
import torch
from statsmodels.stats.contingency_tables import mcnemar
from test_interventions import STYLE, corpus_table, prefill_edited, prefill_recorded, speech

from modgap.corpus.lab_world import generate_lab
from modgap.corpus.table import read_rows
from modgap.interventions import conditions
from modgap.interventions.conditions import COLUMNS, Edit, partner_rows, run_conditions, select_edits
from modgap.interventions.controls import (
    CONTROLS, control_sites, even_positions, item_generator, other_item_partners, other_item_tokens, random_positions,
)
from modgap.interventions.ops import angle_projection, length_normalization
from modgap.interventions.report import CONTROL_COLUMNS, control_effects, paired_ci
from modgap.models import load_adapter
from modgap.models.hooks import RowEdit


def test_random_positions_are_distinct_sorted_seeded_and_uniform():
    i = torch.tensor([5, 2, 9])
    a = random_positions(i, 12, torch.Generator().manual_seed(0))
    assert torch.equal(a, random_positions(i, 12, torch.Generator().manual_seed(0)))
    assert len(set(a.tolist())) == 3 and torch.equal(a, a.sort().values) and a.max() < 12
    gen = torch.Generator().manual_seed(1)
    counts = torch.bincount(torch.cat([random_positions(i, 12, gen) for _ in range(6000)]), minlength=12)
    assert (counts - 1500).abs().max() < 160  # each position drawn with probability 3/12 per edit set
    with pytest.raises(ValueError):
        random_positions(torch.arange(5), 4, gen)


def test_even_positions_are_the_slice_centres():
    assert even_positions(4, 10).tolist() == [1, 3, 6, 8]
    assert even_positions(1, 7).tolist() == [3]
    assert even_positions(0, 7).tolist() == []
    for m in range(1, 20):
        p = even_positions(m, 19)
        assert len(set(p.tolist())) == m
    with pytest.raises(ValueError):
        even_positions(5, 4)


def test_control_sites_keep_the_targets_and_the_count():
    g = torch.Generator().manual_seed(0)
    hs, ht = torch.randn(30, 8, generator=g), torch.randn(6, 8, generator=g)
    i, j = select_edits(hs, ht, "bottom-3")
    for control in ("path", "random", "even"):
        pos, tgt = control_sites(control, i, j, 30, torch.Generator().manual_seed(2))
        assert torch.equal(tgt, j) and len(pos) == len(i) and len(set(pos.tolist())) == len(i)
    assert torch.equal(control_sites("path", i, j, 30, g)[0], i)
    with pytest.raises(ValueError):
        control_sites("other", i, j, 30, g)


def test_other_item_partners_are_seeded_derangements():
    for seed in range(50):
        partners = other_item_partners(4, seed)
        assert all(int(p) != g for g, p in enumerate(partners)) and sorted(partners.tolist()) == [0, 1, 2, 3]
    assert torch.equal(other_item_partners(9, 7), other_item_partners(9, 7))
    assert any(not torch.equal(other_item_partners(9, 7), other_item_partners(9, s)) for s in range(8, 12))
    with pytest.raises(ValueError, match="a pool of at least 2 items, got 1"):
        other_item_partners(1, 0)


def test_item_generator_depends_on_every_key_only():
    draw = lambda *keys: torch.randint(0, 2**30, (4,), generator=item_generator(*keys))  # noqa: E731
    key = (0, "angle all @0 (random)", "q1")
    assert torch.equal(draw(*key), draw(*key))
    for other in ((1, *key[1:]), (0, "angle all @1 (random)", "q1"), (*key[:2], "q2")):
        assert not torch.equal(draw(*key), draw(*other))


def test_other_item_tokens_take_the_same_relative_position():
    j = torch.arange(6)
    assert torch.equal(other_item_tokens(j, 6, 6), j)
    assert other_item_tokens(j, 6, 3).tolist() == [0, 0, 1, 1, 2, 2]  # a shorter text: targets repeat
    assert other_item_tokens(j, 6, 12).tolist() == [1, 3, 5, 7, 9, 11]


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory):
    """(adapter, rows): a tiny Qwen2-Audio and 5 lab test items with noise recordings."""
    tmp = tmp_path_factory.mktemp("controls")
    rows = read_rows(corpus_table(generate_lab(0, 0, 3, 5)["test"], tmp / "audio"))
    model = tiny.build_qwen2_audio(tmp / "model", tiny.tiny_tokenizer(), window_s=4)
    return load_adapter("qwen2_audio", str(model), device="cpu"), rows


def test_control_edits_through_the_hooks_of_a_tiny_model(tiny_lab):
    """Through `prefill_edited` on a tiny Qwen2-Audio: identity ops at random, even and path sites leave the logits
    bit for bit; another item's text pasted at random positions moves them (sites are span-relative, as the path's)."""
    adapter, rows = tiny_lab
    rows = rows[:3]
    s_in = speech(adapter, rows)
    t_in = [adapter.text_inputs(r.item, STYLE) for r in rows]
    base, rec_s = prefill_recorded(adapter, s_in, [0])
    _, rec_t = prefill_recorded(adapter, t_in, [0])
    g = torch.Generator().manual_seed(0)
    sites = [select_edits(hs[0], ht[0], "all") for hs, ht in zip(rec_s, rec_t)]
    partners = other_item_partners(len(rows), 0)
    tokens = [other_item_tokens(j, ht.shape[1], rec_t[int(p)].shape[1])
              for (_, j), ht, p in zip(sites, rec_t, partners)]
    for control in ("random", "even"):
        plan = {}
        for k, (x, (i, j)) in enumerate(zip(s_in, sites)):
            pos, _ = control_sites(control, i, j, len(x.span), g)
            plan[k] = RowEdit(x.span[pos], lambda h: angle_projection(h, h))
        for p, b in zip(prefill_edited(adapter, s_in, 0, plan), base):
            assert torch.equal(p.logprobs, b.logprobs)
    plan = {k: RowEdit(x.span[i], lambda h: length_normalization(h, h)) for k, (x, (i, _)) in
            enumerate(zip(s_in, sites))}
    assert all(torch.equal(p.logprobs, b.logprobs) for p, b in zip(prefill_edited(adapter, s_in, 0, plan), base))
    plan = {}
    for k, (x, (i, _)) in enumerate(zip(s_in, sites)):
        target = rec_t[int(partners[k])][0][tokens[k]] * 10
        plan[k] = RowEdit(x.span[random_positions(i, len(x.span), g)], lambda h, t=target: angle_projection(h, t))
    edited = prefill_edited(adapter, s_in, 0, plan)
    assert all(not torch.allclose(p.logprobs, b.logprobs, atol=1e-4) for p, b in zip(edited, base))


# --- through run_conditions ------------------------------------------------------------------------------------------
EDITS = [Edit("angle", "bottom-3", 0), Edit("length", "all", "output"), Edit("angle", "all", 1, "l2", 0)]


def test_identity_ops_at_every_control_site_reproduce_the_baseline_bit_for_bit(tiny_lab, monkeypatch):
    """With the ops made identities (they still receive each control's target), every path and control row of
    `run_conditions` has the unedited S prediction and log-likelihoods bit for bit; batches of 2 over 5 items leave a
    batch of one, whose other-item partner comes from another batch."""
    adapter, rows = tiny_lab

    def identity(op):
        def fn(h, target):
            assert target.shape == h.shape
            return op(h, h)
        return fn

    monkeypatch.setitem(conditions.OPS, "angle", identity(angle_projection))
    monkeypatch.setitem(conditions.OPS, "length", identity(length_normalization))
    t = run_conditions(adapter, rows, STYLE, "none", EDITS, batch_items=2, controls=CONTROLS, seed=0)
    edits, base = t[t["condition"] == "edit"], t[t["condition"] == "S"].set_index("id")
    assert set(edits["control"]) == {"path", *CONTROLS} and len(edits) == 3 * 4 * len(rows)
    assert (edits["prediction"] == edits["baseline_prediction"]).all()
    assert all(a == b for a, b in zip(edits["loglik"], edits["baseline_loglik"]))
    assert all(a == b for a, b in zip(edits["loglik"], base.loc[edits["id"], "loglik"]))
    assert set(t.loc[t["condition"] != "edit", "control"]) == {"none"}


def test_every_edit_has_its_controls_with_the_path_edit_count(tiny_lab):
    adapter, rows = tiny_lab
    t = run_conditions(adapter, rows, STYLE, "none", EDITS, batch_items=5, controls=CONTROLS, seed=0)
    edits = t[t["condition"] == "edit"]
    keys = ["layer", "select", "op", "metric", "select_layer"]
    assert edits.groupby(keys).ngroups == 3
    for _, group in edits.groupby(keys):
        counts = group.pivot(index="id", columns="control", values="n_edited")
        assert sorted(counts.columns) == sorted(["path", *CONTROLS]) and counts.notna().all().all()
        assert counts.eq(counts["path"], axis=0).all().all() and (counts["path"] >= 1).all()
        path = group.loc[group["control"] == "path", "label"].iloc[0]
        assert set(group["label"]) == {path, *(f"{path} ({c})" for c in CONTROLS)}


def test_controls_edit_their_own_sites_with_their_own_targets(tiny_lab, monkeypatch):
    """Known answer: a recording (identity) op sees, per item, the path's speech rows and text targets; random
    positions from `random_positions` under the item's generator; even positions; the path rows with the partner's
    text states at the same relative tokens."""
    adapter, rows = tiny_lab
    rows, seen = rows[:4], []
    monkeypatch.setitem(conditions.OPS, "angle", lambda h, t: seen.append((h.clone(), t.clone())) or h)
    run_conditions(adapter, rows, STYLE, "none", [Edit("angle", "bottom-3", 0)], batch_items=4, controls=CONTROLS,
                   seed=5)
    _, rec_s = prefill_recorded(adapter, speech(adapter, rows), [0])
    _, rec_t = prefill_recorded(adapter, [adapter.text_inputs(r.item, STYLE) for r in rows], [0])
    partners = other_item_partners(len(rows), 5)
    expected = []
    for control in ("path", *CONTROLS):
        for g, (r, hs, ht) in enumerate(zip(rows, rec_s, rec_t)):
            i, j = select_edits(hs[0], ht[0], "bottom-3")
            gen = item_generator(5, f"angle bottom-3 @0 ({control})", r.id)
            if control == "other_item":
                other = rec_t[int(partners[g])][0]
                expected.append((hs[0][i], other[other_item_tokens(j, ht.shape[1], other.shape[0])]))
            else:
                pos = {"path": i, "random": random_positions(i, hs.shape[1], gen),
                       "even": even_positions(len(i), hs.shape[1])}[control]
                expected.append((hs[0][pos], ht[0][j]))
    assert len(seen) == len(expected)
    for (h, t), (eh, et) in zip(seen, expected):
        torch.testing.assert_close(h, eh, rtol=0, atol=1e-6)
        torch.testing.assert_close(t, et, rtol=0, atol=1e-6)


def test_controls_are_deterministic_given_the_seed(tiny_lab):
    adapter, rows = tiny_lab
    def run(seed: int, batch: int, shards: tuple[slice, ...] = (slice(None),)) -> pd.DataFrame:
        t = pd.concat([run_conditions(adapter, rows[shard], STYLE, "none", [Edit("angle", "all", 0)], batch_items=batch,
                                      controls=CONTROLS, seed=seed, partner_pool=rows) for shard in shards])
        return t.sort_values(["label", "id"], ignore_index=True)

    a = run(3, 5)
    pd.testing.assert_frame_equal(a, run(3, 5))
    # other batches, or shards (one of a single item): the same sites and partners, only the padding differs
    for b in (run(3, 2), run(3, 5, (slice(0, 4), slice(4, 5)))):
        assert (a["prediction"] == b["prediction"]).all() and (a["n_edited"] == b["n_edited"]).all()
        np.testing.assert_allclose(np.stack(a["loglik"]), np.stack(b["loglik"]), rtol=0, atol=1e-4)
    c = run(4, 5)
    moved = ~np.isclose(np.stack(a["loglik"]), np.stack(c["loglik"]), rtol=0, atol=1e-6).all(1)
    assert set(a.loc[moved, "control"]) <= {"random", "other_item"} and moved.any()
    with pytest.raises(ValueError, match=f"item {rows[0].id}: not in the pool of other-item partners"):
        partner_rows(rows[:2], rows[2:], 0)
    with pytest.raises(ValueError, match="unknown control 'shuffled'"):
        run_conditions(adapter, rows[:2], STYLE, "none", [Edit("angle", "all", 0)], controls=["shuffled"], batch_items=2)


# --- the effect table ------------------------------------------------------------------------------------------------
def _edit_rows(label: str, op: str, control: str, correct: list[int], base: list[int]) -> list[dict]:
    name = label if control == "path" else f"{label} ({control})"
    return [{"id": f"i{n}", "condition": "edit", "label": name, "control": control, "layer": 0, "site": "input",
             "select": label.split()[1], "op": op, "metric": "cos", "select_layer": 0, "r": None, "prediction": c,
             "correct": c, "baseline_prediction": b, "baseline_correct": b, "n_edited": 2, "merge_ratio": None,
             "loglik": [0.0], "baseline_loglik": [0.0], "lens_margin": None, "lens_entropy": None}
            for n, (c, b) in enumerate(zip(correct, base))]


def test_control_effects_equal_a_hand_computation():
    base = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0]  # 30 %
    runs = {"path": [1, 1, 1, 1, 1, 1, 0, 1, 1, 0],  # 80 %
            "random": [0, 0, 0, 0, 1, 0, 1, 1, 0, 0],  # 30 %: path alone right on 6 items, random alone on 1
            "even": [1, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # 20 %
            "other_item": [0] * 10}
    records = []
    for control, correct in runs.items():
        records += _edit_rows("angle bottom-3 @0", "angle", control, correct, base)
    records += _edit_rows("length all @0", "length", "path", base, base)  # no controls run
    records += _edit_rows("length all @0", "length", "even", runs["even"], base)
    table = pd.DataFrame(records)[COLUMNS].astype({"layer": "Int64", "select_layer": "Int64", "r": "Int64"})
    out = control_effects(table)
    assert list(out.columns) == CONTROL_COLUMNS and len(out) == 2
    angle, length = out.iloc[0], out.iloc[1]
    assert (angle["condition"], angle["n_items"], angle["n_edited"], angle["baseline_accuracy"]) == (
        "angle bottom-3 @0", 10, 2.0, 0.3)
    assert [angle[f"{c}_delta"] for c in runs] == [50.0, 0.0, -10.0, -30.0]
    assert (angle["effect"], angle["path_only"], angle["random_only"]) == (50.0, 6, 1)
    diff = np.array(runs["path"]) - np.array(runs["random"])  # per item, path minus random
    half = 1.959964 * diff.std() / np.sqrt(10)
    assert angle["effect_ci_lo"] == pytest.approx(100 * (diff.mean() - half))
    assert angle["effect_ci_hi"] == pytest.approx(100 * (diff.mean() + half))
    assert (angle["effect_ci_lo"], angle["effect_ci_hi"]) == paired_ci(6, 1, 10)
    assert angle["effect_mcnemar_p"] == pytest.approx(mcnemar([[2, 1], [6, 1]], exact=True).pvalue)
    assert angle["effect_mcnemar_p"] == pytest.approx(0.125)  # two-sided binomial, 1 of 7 discordant
    assert length["path_delta"] == 0.0 and length["even_delta"] == -10.0
    assert np.isnan(length["random_delta"]) and np.isnan(length["effect"]) and np.isnan(length["effect_mcnemar_p"])
    short = table.drop(table.index[(table["control"] == "random") & (table["id"] == "i3")])
    with pytest.raises(ValueError, match=r"angle bottom-3 @0 \(random\): its items differ"):
        control_effects(short)


def test_layer_sweep_figure_draws_the_path_and_each_control():
    from modgap.interventions.stage import conditions_table
    from modgap.plots.interventions import SITE_SERIES, edit_layer_curves

    base = [1, 0, 0, 1, 0, 0, 1, 0, 0, 0]
    records = []
    for layer in (0, 2, 3):
        for op in ("angle", "length"):
            for k, control in enumerate(("path", "random", "even", "other_item")):
                correct = [int((n + k + layer) % 3 == 0) for n in range(10)]
                records += [{**r, "layer": layer, "label": r["label"].replace("@0", f"@{layer}")}
                            for r in _edit_rows("angle all @0".replace("angle", op), op, control, correct, base)]
    table = pd.DataFrame(records)[COLUMNS].astype({"layer": "Int64", "select_layer": "Int64", "r": "Int64"})
    conditions = conditions_table({"lab-full@step10": table, "lab-full@step20": table.assign(correct=base * 24)})
    fig = edit_layer_curves(conditions)
    fig.canvas.draw()
    assert len(fig.axes) == 2 and [ax.get_title(loc="left") for ax in fig.axes] == ["angle all", "length all"]
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_label() in dict(SITE_SERIES).values()]
        assert [line.get_label() for line in lines] == [label for _, label in SITE_SERIES]
        assert all(list(line.get_xdata()) == [0, 2, 3] for line in lines)
    means = conditions[conditions["kind"] == "edit"].groupby(["op", "control", "layer"])["delta"].mean()
    path = [line for line in fig.axes[0].get_lines() if line.get_label() == "Path positions"][0]
    np.testing.assert_allclose(path.get_ydata(), means.loc[("angle", "path")].to_numpy())
    assert len(fig.axes[0].collections) == 4  # the range over the two models, one band per line
