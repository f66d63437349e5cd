"""The attention dispersion figure on a seeded synthetic metrics items table: curves per condition from layer 1, and
the uniform baselines at their closed-form values; the heatmap items' rows from a small store to the figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402


from modgap import plots  # noqa: E402
from modgap.metrics.attention_rows import attention_rows  # noqa: E402
from modgap.plots.stage import plot_attention_rows  # noqa: E402
from modgap.states.store import CondBatch, StoreWriter  # noqa: E402

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


L, HEADS, WORDS = 3, 2, {"q0": ["five", "plus", "ten"], "q1": ["one", "more", "time"], "q2": ["two", "and", "six"]}
SPAN_WORDS = {"S": [-1, 0, 0, 1, 2, 2, -1], "T": [0, 1, 2]}  # word index per span position


def rows_store(path, kept: int) -> dict[str, np.ndarray]:
    """A store of the three items of WORDS whose first `kept` items hold attention rows (random, renormalised over
    the span; block 0 NaN); returns the rows written, keyed `{id}/{cond}` as [n, L+1, heads]."""
    rng, written = np.random.default_rng(0), {}
    with StoreWriter(path, model="tiny", layers=[0, L], d=4, n_options=2, readouts={},
                     ragged={"attn_rows": (L + 1, HEADS)}) as w:
        for i, item in enumerate(WORDS):
            conds = {}
            for c, words in SPAN_WORDS.items():
                a = rng.uniform(size=(len(words) if i < kept else 0, L + 1, HEADS)).astype(np.float32)
                a /= a.sum(0, keepdims=True)
                a[:, 0] = np.nan
                written[f"{item}/{c}"] = a
                conds[c] = CondBatch(torch.zeros(2, len(words), 4), [len(words)], np.arange(len(words)), [0], [1],
                                     word=np.array(words), readouts={}, ragged={"attn_rows": [a]})
            w.append([item], conds)
    return written


def test_attention_rows_from_a_store_to_the_figure(tmp_path):
    written = rows_store(tmp_path / "shard0.zarr", kept=2)
    table = tmp_path / "items.parquet"
    pd.DataFrame({"id": list(WORDS), "words": list(WORDS.values())}).to_parquet(table)
    assert attention_rows([str(tmp_path / "shard0.zarr")], table, tmp_path / "rows.npz") == ["q0", "q1"]
    data = np.load(tmp_path / "rows.npz")
    np.testing.assert_array_equal(data["q0/S"], written["q0/S"].transpose(1, 2, 0))  # [L+1, heads, n]
    assert list(data["q1/T_words"]) == SPAN_WORDS["T"] and list(data["q1/words"]) == WORDS["q1"]
    plot_attention_rows(tmp_path / "rows.npz", "tiny", tmp_path / "fig", {})
    assert (tmp_path / "fig.png").stat().st_size > 0 and (tmp_path / "fig.pdf").exists()
    fig = plots.attention_rows_figure(data)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2 * 4  # two items x (S, T head mean; S, T heads in block L)
    s_mean, t_mean, s_heads, _ = panels[:4]
    np.testing.assert_allclose(s_mean.get_images()[0].get_array(), written["q0/S"][:, 1:].mean(-1).T)  # [L, n]
    np.testing.assert_allclose(s_heads.get_images()[0].get_array(), written["q0/S"][:, L].T)  # [heads, n]
    assert s_mean.get_images()[0].get_extent()[2:] == [0.5, L + 0.5]  # rows are blocks 1..L
    assert [t.get_text() for t in s_mean.get_xticklabels()] == ["five", "plus", "ten"]
    assert list(s_mean.get_xticks()) == [1, 3, 4]  # each word at its first speech position
    assert "block 3" in s_heads.get_title(loc="left") and s_mean.get_ylabel().startswith("q0")
    fig.canvas.draw()
    assert min(t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()) >= 8


def test_attention_rows_need_the_readout(tmp_path):
    rows_store(tmp_path / "s.zarr", kept=0)
    pd.DataFrame({"id": list(WORDS), "words": list(WORDS.values())}).to_parquet(tmp_path / "t.parquet")
    assert attention_rows([str(tmp_path / "s.zarr")], tmp_path / "t.parquet", tmp_path / "rows.npz") == []
    plot_attention_rows(tmp_path / "rows.npz", "tiny", tmp_path / "fig", {})  # a figure saying so, not a failure
    with StoreWriter(tmp_path / "plain.zarr", model="tiny", layers=[0], d=4, n_options=2):
        pass
    with pytest.raises(ValueError, match="plain.zarr: no 'attn_rows' rows"):
        attention_rows([str(tmp_path / "plain.zarr")], tmp_path / "t.parquet", tmp_path / "x.npz")
