"""Transcript emergence from a hand-made item-metrics frame with known curves."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from modgap.metrics.transcript import FRACTIONS, emergence_layer, transcript_table


def test_emergence_layer_is_the_first_layer_reaching_the_level():
    curves = np.array([[0.0, 0.4, 0.5, 0.9], [0.0, 0.1, 0.2, 0.3], [0.6, 0.0, 0.0, 0.0]])
    got = emergence_layer(curves, np.array([1, 2, 3, 4]), 0.5)
    assert got[0] == 3 and np.isnan(got[1]) and got[2] == 1


def test_transcript_table_means_and_emergence():
    # item a: top10 reaches 1 at layer 2; item b: 0.5 at layer 3; item c: no words (NaN, left out); wrong control 0
    top10 = {"a": [0.0, 1.0, 1.0], "b": [0.0, 0.0, 0.5], "c": [np.nan] * 3}
    rows = [{"id": i, "layer": l, **{c: 0.0 for c in FRACTIONS}, "transcript_top10_S": v[n], "transcript_top1_S": 0.1}
            for i, v in top10.items() for n, l in enumerate((1, 2, 3))]
    table = transcript_table(pd.DataFrame(rows), level=0.5).set_index("layer")
    assert table["transcript_top10_S"].tolist() == pytest.approx([0.0, 0.5, 0.75])
    assert table["emerged"].tolist() == [0.0, 0.5, 1.0] and (table["n_items"] == 2).all()
    assert (table["emergence_layer"] == 2).all() and table["emergence_layer_wrong"].isna().all()
    with pytest.raises(ValueError, match="states.readouts"):
        transcript_table(pd.DataFrame(rows).drop(columns="transcript_wrong_top5_S"), 0.5)
