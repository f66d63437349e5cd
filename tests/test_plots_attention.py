"""The attention dispersion figure on a seeded synthetic metrics items table: curves per condition from layer 1, and
the uniform baselines at their closed-form values."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from workflow_util import planned_jobs, write_config  # noqa: E402

from modgap import plots  # noqa: E402

MODELS, LAYERS, SPAN = ["qwen2.5-omni", "voxtral"], range(4), {"S": [100, 120, 140], "T": [10, 12, 20]}


def attention_items(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model in MODELS:
        for i in range(3):
            for layer in LAYERS:
                row = {"model": model, "id": f"q{i}", "layer": layer}
                for c, spans in SPAN.items():
                    u = np.nan if layer == 0 else rng.uniform()
                    row |= {f"attn_cov90_{c}": 1 + u * spans[i], f"attn_cov90_frac_{c}": u, f"attn_max_{c}": u,
                            f"attn_entropy_{c}": u, f"attn_span_len_{c}": spans[i]}
                rows.append(row)
    return pd.DataFrame(rows)


def test_attention_dispersion_curves_and_uniform_baselines():
    items = attention_items()
    fig = plots.attention_dispersion(items, n_boot=20)
    assert len(fig.axes) == len(MODELS) * 4
    cov_ax, frac_ax, max_ax, entropy_ax = fig.axes[:4]  # first model, one panel per summary
    speech, speech_uniform, text, text_uniform = max_ax.get_lines()
    first = items[(items["model"] == MODELS[0]) & (items["layer"] >= 1)]
    assert list(speech.get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(speech.get_ydata(), first.groupby("layer")["attn_max_S"].mean())
    np.testing.assert_allclose(text.get_ydata(), first.groupby("layer")["attn_max_T"].mean())
    assert speech_uniform.get_ydata()[0] == np.mean([1 / n for n in SPAN["S"]])
    assert text_uniform.get_ydata()[0] == np.mean([1 / n for n in SPAN["T"]])
    assert cov_ax.get_lines()[1].get_ydata()[0] == np.mean([math.ceil(0.9 * n) for n in SPAN["S"]])
    assert frac_ax.get_lines()[3].get_ydata()[0] == np.mean([math.ceil(0.9 * n) / n for n in SPAN["T"]])
    assert entropy_ax.get_lines()[1].get_ydata()[0] == 1.0
    fig.canvas.draw()
    assert min(t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()) >= 8


def test_study_plans_the_figure_only_with_the_readout(tmp_path):
    record = {"id": "q1", "subject": "s", "question": "what is two plus three", "choices": ["five", "six"], "answer": 0}
    (tmp_path / "data.jsonl").write_text(json.dumps(record) + "\n")
    config = {"datasets": {"mine": {"source": "jsonl", "path": "data.jsonl"}},
              "models": {"mine": {"family": "qwen2_audio", "path": str(tmp_path / "checkpoint")}}}
    write_config(tmp_path, config)
    assert "plot_attention" not in planned_jobs(tmp_path)
    write_config(tmp_path, config | {"states": {"readouts": ["lens", "attention"]}})
    assert planned_jobs(tmp_path)["plot_attention"] == 1
