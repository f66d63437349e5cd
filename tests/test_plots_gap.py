"""The stats figures on the stats stage's own tables: P1's decomposition per strategy, and fit labels that say where
their R² interval comes from."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from modgap import plots  # noqa: E402
from modgap.plots.gap import fit_label  # noqa: E402


def decomposition_table(base: float = 97.0) -> pd.DataFrame:
    steps = [50, 100, 200, 400]
    table = pd.DataFrame({"model": [f"lab-{s}@step{n}" for s in ("frozen", "full") for n in steps],
                          "strategy": ["frozen"] * 4 + ["full"] * 4, "step": steps * 2, "n_items": 200,
                          "base_text_acc": base, "text_acc": [94.5, 94.5, 94.5, 94.5, 93, 92.5, 94.5, 95],
                          "speech_acc": [26.0, 23, 31, 38, 29, 26, 42, 46.5]})
    return table.assign(text_loss=table["base_text_acc"] - table["text_acc"],
                        gap=table["text_acc"] - table["speech_acc"])


def test_decomposition_lines_one_panel_per_strategy():
    table = decomposition_table()
    fig = plots.decomposition_lines(table)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["frozen", "full"]
    full = fig.axes[1]
    lines = {line.get_gid(): line for line in full.get_lines()}
    assert list(lines) == ["base_text_acc", "text_acc", "speech_acc"]
    np.testing.assert_allclose(lines["speech_acc"].get_ydata(), [29, 26, 42, 46.5])
    np.testing.assert_allclose(lines["base_text_acc"].get_ydata(), 97.0)
    assert [t.get_text() for t in full.get_xticklabels()] == ["50", "100", "200", "400"]
    assert [c.get_gid() for c in full.collections] == ["gap"]


def test_decomposition_lines_without_a_base_accuracy():
    fig = plots.decomposition_lines(decomposition_table(base=np.nan))
    assert [line.get_gid() for line in fig.axes[0].get_lines()] == ["text_acc", "speech_acc"]


@pytest.mark.parametrize("source, flag", [("checkpoints", ""), ("items (item noise only)", " item noise only")])
def test_fit_label_flags_an_r2_interval_of_item_noise_only(source, flag):
    fit = pd.Series({"r2": 0.5, "r2_ci_lo": 0.2, "r2_ci_hi": 0.8, "r2_ci_source": source})
    assert fit_label("full", fit) == f"full: R²=0.50 [0.20, 0.80]{flag}"
