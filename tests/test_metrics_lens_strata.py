"""Lens strata on a hand-made item-metrics frame whose stratum means are known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modgap.metrics.lens_strata import lens_strata

# item -> (correct_S, correct_T); margin_S at layer l = 10 * stratum code + l, the other lens columns constant
OUTCOMES = {"a": (1, 1), "b": (1, 1), "c": (0, 1), "d": (0, 1), "e": (0, 1), "f": (1, 0), "g": (0, 0),
            "h": (0.5, 1)}  # h: an open-task score, no stratum
CODE = {(1, 1): 0, (0, 1): 1, (1, 0): 2, (0, 0): 3, (0.5, 1): 9}


def items_frame() -> pd.DataFrame:
    rows = [{"id": i, "layer": l, "correct_S": float(s), "correct_T": float(t),
             "lens_margin_S": 10.0 * CODE[(s, t)] + l, "lens_margin_T": 1.0, "lens_entropy_S": 0.5 + 0.1 * l,
             "lens_entropy_T": 0.2} for i, (s, t) in OUTCOMES.items() for l in (1, 2)]
    return pd.DataFrame(rows)


def test_strata_means_and_counts():
    table = lens_strata(items_frame(), "cloze", seed=0)
    own = table[table["labels"] == "outcome"].set_index(["layer", "stratum"])
    assert own.loc[(1, "both"), "n"] == 2 and own.loc[(1, "text_only"), "n"] == 3
    assert own.loc[(2, "speech_only"), "n"] == 1 and own.loc[(2, "all"), "n"] == 7  # h has no stratum
    for stratum, code in [("both", 0), ("text_only", 1), ("speech_only", 2), ("neither", 3)]:
        assert own.loc[(2, stratum), "lens_margin_S"] == pytest.approx(10 * code + 2)
    assert own.loc[(1, "all"), "lens_margin_S"] == pytest.approx((0 + 0 + 10 * 3 + 20 + 30) / 7 + 1)
    assert own.loc[(2, "neither"), "lens_entropy_S"] == pytest.approx(0.7)
    assert set(table["margin_scores"]) == {"first token of each option's continuation"}


def test_shuffled_control_keeps_sizes_and_moves_means():
    table = lens_strata(items_frame(), "letter", seed=3)
    own = table[table["labels"] == "outcome"].set_index(["layer", "stratum"])
    shuffled = table[table["labels"] == "shuffled"].set_index(["layer", "stratum"])
    assert (own["n"].sort_index() == shuffled["n"].sort_index()).all()
    assert shuffled.loc[(1, "all"), "lens_margin_S"] == pytest.approx(own.loc[(1, "all"), "lens_margin_S"])
    strata = ["both", "text_only", "speech_only", "neither"]
    assert not np.allclose(own.loc[1].loc[strata, "lens_margin_S"], shuffled.loc[1].loc[strata, "lens_margin_S"])


def test_missing_lens_columns_name_the_readout():
    with pytest.raises(ValueError, match="states.readouts"):
        lens_strata(items_frame().drop(columns="lens_entropy_T"), "cloze", seed=0)


def test_figure_draws_every_stratum_and_its_control():
    from modgap.plots import lens_strata_curves

    fig = lens_strata_curves({"m": lens_strata(items_frame(), "cloze", seed=0)})
    panels = fig.axes[:4]
    gids = {line.get_gid() for line in panels[0].get_lines()}
    assert gids == {f"{s}-{l}" for s in ("both", "text_only", "speech_only", "neither", "all")
                    for l in ("outcome", "shuffled")}
    both = next(line for line in panels[0].get_lines() if line.get_gid() == "both-outcome")
    assert both.get_ydata().tolist() == [1.0, 2.0]  # margin_S of stratum "both" at layers 1, 2


def test_redundancy_entropy_figure_draws_one_line_per_r():
    from modgap.plots import redundancy_entropy_curves

    lens = pd.DataFrame([{"model": m, "r": r, "layer": l, "lens_entropy": 0.1 * r + l, "lens_margin": 0.0}
                         for m in ("a", "b") for r in (1, 2, 4, 8) for l in (0, 1, 2)])
    fig = redundancy_entropy_curves(lens)
    lines = {line.get_gid(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"r1", "r2", "r4", "r8"}
    assert lines["r4"].get_ydata().tolist() == pytest.approx([0.4, 1.4, 2.4])


def test_transcript_figure_draws_each_k_beside_its_wrong_word_control():
    from modgap.plots import transcript_curves

    layers = np.arange(4)
    table = pd.DataFrame({"layer": layers, **{f"transcript_top{k}_S": 0.1 * k * layers / 3 for k in (1, 5, 10)},
                          **{f"transcript_wrong_top{k}_S": np.full(4, 0.01 * k) for k in (1, 5, 10)}})
    fig = transcript_curves({"lab-full@step400": table, "lab-frozen@step50": table})
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["lab-full@step400", "lab-frozen@step50"]  # strategies as met
    lines = {line.get_gid(): line for line in fig.axes[0].get_lines()}
    assert sorted(lines) == ["top1", "top10", "top5", "wrong-top1", "wrong-top10", "wrong-top5"]
    np.testing.assert_allclose(lines["top10"].get_ydata(), table["transcript_top10_S"])
    np.testing.assert_allclose(lines["wrong-top5"].get_ydata(), np.full(4, 0.05))
