"""Figures of the modgap study: pure functions from loaded tables/arrays to matplotlib Figures, and `save`.

Every figure function takes a `style` dict of rcParams (applied over `style.BASE_STYLE` in a context), reads no
files, and returns a pyplot-free `Figure`; `save(fig, paths)` writes it (PNG, PDF) atomically.
"""
from .accuracy import accuracy_bars
from .attention import attention_dispersion, attention_rows_figure
from .alignment import path_stats, similarity_heatmap
from .base_layers import base_layer_agreement
from .cka import cka_heatmap, cka_small_multiples
from .gap import decomposition_lines, gap_scatter, item_distributions
from .interventions import calibration_bars, edit_layer_curves, intervention_bars, redundancy_curve
from .layers import bootstrap_band, layer_curves
from .probes import probe_curves
from .lens import lens_strata_curves, redundancy_entropy_curves, transcript_curves
from .style import save
from .synchrony import synchrony_curves

__all__ = ["accuracy_bars", "attention_dispersion", "attention_rows_figure", "base_layer_agreement", "bootstrap_band", "calibration_bars",
           "cka_heatmap", "cka_small_multiples", "decomposition_lines", "edit_layer_curves", "gap_scatter",
           "intervention_bars", "item_distributions", "layer_curves", "lens_strata_curves", "path_stats",
           "probe_curves", "redundancy_curve", "redundancy_entropy_curves", "save", "similarity_heatmap",
           "synchrony_curves", "transcript_curves"]
