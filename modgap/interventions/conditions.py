"""Interventions: re-score corpus items under edits of the speech prompt's hidden states
(P1's angle projection and length normalization, P2's moment calibration) and under text redundancy (P2).

Per batch of items the driver runs one unedited forward per condition (S and T), which gives the baseline
predictions and, through recording hooks, the span states the edits need; then one edited S forward per edit
condition (options scored after the hook is gone), and one T forward per redundancy factor, whose rows also carry the
logit lens at the decision position (`lens_margin`, `lens_entropy` [L+1]: `modgap.states.readouts.lens`; None on
other rows).

Token selection (P1, open choices exposed): at the selection layer (default: the edited layer) the similarity matrix
A = token_similarity(h^S, h^T, metric) gives the path i*_j (`alignment_path`) and its values A[i*_j, j]
(`path_values`). "bottom-k" picks the k text tokens of lowest path similarity (for metric "l2", where values are
distances, the k largest distances), "all" every text token. Speech position i*_j is edited with
op(h^S_{i*_j}, h^T_j) at the edited layer. When several selected text tokens map to the same speech position, the
first in text order wins (the lowest j): each speech position is edited once, with one text target, so the op's
norm and direction properties hold exactly; `n_edited` records how many positions were edited.

Controls (METHODS.md, "Controls"): every edit condition also runs, on the same items and with the same number of
edits, at random speech positions of the span ("random", seeded per item and condition), at evenly spaced ones
("even") and at the path positions with another item's text states ("other_item": partners from a seeded
derangement of a pool of items, by default the items run, in the stage the whole test table, so that a partner does
not depend on the shard; their text states come from one extra T forward per batch). Rows carry `control`: "path"
for the condition itself, the control's name for a control, "none" for baselines, calibration and redundancy.

KV merging (P2 App. C): `KVMerge` merges similar adjacent speech keys/values in a block range's attention
(`modgap.interventions.kv_merge`, `modgap.models.hooks.merge_kv`), against as many random adjacent merges.

Edit sites: hidden state l at the hook point of `modgap.models.hooks` (0 = input embeddings, l = output of block l,
both equal to `output_hidden_states[l]` for l < L). "input" is layer 0, "middle" layer L // 2 (the output of the
middle block) and "output" layer L - 1, the last one whose edit can reach the answer (see `resolve_layer`). Recorded
states, selection and calibration statistics all come from the same hook points, so they are in the space that is
edited.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import pandas as pd
import torch

from modgap.corpus.items import Item
from modgap.corpus.table import Row
from modgap.interventions.calibration import STATS_MODES, CalibrationStats, MomentStats, check_held_out
from modgap.interventions.kv_merge import random_links, realised_ratio, similarity_links
from modgap.interventions.controls import (
    CONTROLS, control_sites, item_generator, other_item_partners, other_item_tokens,
)
from modgap.interventions.ops import OPS, moment_calibration
from modgap.interventions.options import InterventionsOptions
from modgap.interventions.redundancy import redundant_item
from modgap.metrics import alignment_path, bottom_k_tokens, path_values, token_similarity
from modgap.metrics.geometry import METRICS
from modgap.metrics.moments import MomentAccumulator
from modgap.models.base import Scores, SpeechLM
from modgap.models.hooks import RowEdit
from modgap.states import spine
from modgap.states.readouts.lens import LogitLens

_SELECT = re.compile(r"^(?:all|bottom-(\d+))$")
COLUMNS = [
    "id", "condition", "label", "control", "layer", "site", "select", "op", "metric", "select_layer", "r", "prediction",
    "correct", "baseline_prediction", "baseline_correct", "n_edited", "merge_ratio", "loglik", "baseline_loglik",
    "lens_margin", "lens_entropy",
]


def resolve_layer(layer: int | str, n_layers: int, editable: bool = True) -> int:
    """The hidden-state index an edit is made at: 0..n_layers - 1, "input" (0), "middle" (n_layers // 2) or
    "output" (n_layers - 1).

    Layer n_layers (the output of the last decoder block) is refused: the option scores read the next-token logits
    at the last prompt position and attend to KV caches computed from layers < n_layers, so editing question
    positions there provably changes nothing. The last layer whose edit can reach the answer is n_layers - 1, the
    input of the last block; "output" names it. With `editable=False` (a selection layer, never edited) layer
    n_layers is accepted. ValueError naming the layer and the valid range otherwise.
    """
    if layer == "input":
        return 0
    if layer == "middle":
        return n_layers // 2
    if layer == "output":
        return n_layers - 1
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer <= n_layers:
        raise ValueError(f"layer {layer!r} out of range: the model has layers 0..{n_layers}; edits can be made at "
                         f"0..{n_layers - 1} (or 'input' = 0, 'middle' = {n_layers // 2}, 'output' = {n_layers - 1})")
    if layer == n_layers and editable:
        raise ValueError(f"layer {layer} is the output of the last decoder block: editing question positions there "
                         "cannot change the option scores (the logits are read at the last prompt position); edits "
                         f"can be made at 0..{n_layers - 1} ('output' = {n_layers - 1}, the last block's input)")
    return int(layer)


def _site(layer: int, n_layers: int) -> str:
    return "input" if layer == 0 else "output" if layer == n_layers - 1 else "block"


@dataclass(frozen=True)
class Edit:
    """P1 edit: `op` ("angle" | "length") on the speech positions matched to the selected text tokens at `layer`.

    select: "all" or "bottom-<k>" (e.g. "bottom-3"); metric and select_layer choose the token selection (cosine at
    the edited layer by default).
    """

    op: str
    select: str
    layer: int | str = 0
    metric: str = "cos"
    select_layer: int | str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r} (known: {', '.join(OPS)})")
        m = _SELECT.match(str(self.select))
        if not m or (m.group(1) is not None and int(m.group(1)) < 1):
            raise ValueError(f"unknown select {self.select!r} (expected 'all' or 'bottom-<k>' with k >= 1)")
        if self.metric not in METRICS:
            raise ValueError(f"unknown selection metric {self.metric!r} (known: {', '.join(METRICS)})")

    @property
    def k(self) -> int | None:
        m = _SELECT.match(self.select)
        return None if m.group(1) is None else int(m.group(1))


@dataclass(frozen=True)
class Calibration:
    """P2 moment calibration of the whole speech span at `layer` (0 / "input", L - 1 / "output", or any block
    between; see `resolve_layer` for why not L). It edits every span position, so it has no site controls (random
    or even positions of the whole span are the span itself)."""

    layer: int | str = "input"
    stats_mode: str = "per_dim"

    def __post_init__(self) -> None:
        if self.stats_mode not in STATS_MODES:
            raise ValueError(f"unknown stats_mode {self.stats_mode!r} (known: {', '.join(STATS_MODES)})")


@dataclass(frozen=True)
class Redundancy:
    """P2 text redundancy: condition T with every question word repeated `r` times."""

    r: int

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r < 1:
            raise ValueError(f"redundancy factor must be an integer >= 1, got {self.r!r}")


@dataclass(frozen=True)
class KVMerge:
    """P2 KV token merging in the attention of decoder blocks `first`..`last` (0-based, inclusive; see
    `modgap.models.hooks.merge_kv`): adjacent speech positions whose keys have cosine above `threshold` merge, at
    most `max_ratio` of the span per block. Its rows have condition "kv_merge", layer = first, select_layer = last,
    n_edited = merges summed over the blocks and merge_ratio = `realised_ratio`; its control ("random") merges the
    same number of adjacent pairs per item and block, drawn at random (seeded per item, block and condition)."""

    first: int
    last: int
    threshold: float = 0.9
    max_ratio: float = 0.25

    @property
    def blocks(self) -> list[int]:
        return list(range(self.first, self.last + 1))


Condition = Union[Edit, Calibration, Redundancy, KVMerge]


def conditions_from_options(options: InterventionsOptions) -> list[Condition]:
    """Every condition of the `interventions` options: edits (layers x ops x selections; "bottom-k" takes `k`),
    calibrations, redundancy factors and KV merging (when enabled)."""
    selects = [f"bottom-{options.k}" if s == "bottom-k" else s for s in options.select]
    out: list[Condition] = [Edit(op, s, layer, options.metric, options.select_layer)
                            for layer in options.layers for op in options.ops for s in selects]
    out += [Calibration(site, options.stats_mode) for site in options.calibration]
    out += [Redundancy(int(r)) for r in options.redundancy]
    merge = options.kv_merge
    out += [KVMerge(*merge.layers, merge.threshold, merge.max_ratio)] if merge.enabled else []
    return out


# --- pure planning ---------------------------------------------------------------------------------------------------
def select_edits(
    sel_s: torch.Tensor, sel_t: torch.Tensor, select: str, metric: str = "cos", item_id: str = "?"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which speech positions to edit, and with which text token: (i [m], j [m]) indices into the spans.

    sel_s [Ts, d], sel_t [Tt, d]: span states at the selection layer. Each speech position appears once (first
    selected text token in text order wins).
    """
    k = Edit("angle", select, metric=metric).k
    n_text = sel_t.shape[0]
    if k is not None and k > n_text:
        raise ValueError(f"item {item_id}: bottom-k with k={k} but its text span has only {n_text} tokens")
    a = token_similarity(sel_s[None], sel_t[None], metric)  # [1, Ts, Tt]
    path = alignment_path(a, metric)  # [1, Tt]
    if k is None:
        j = torch.arange(n_text)
    else:
        values = path_values(a, path)
        j = bottom_k_tokens(values if metric == "cos" else -values, k)[0].sort().values.cpu()
    i = path[0].cpu()[j]
    _, first = np.unique(i.numpy(), return_index=True)  # first occurrence in text order of each speech position
    keep = torch.from_numpy(np.sort(first))
    return i[keep], j[keep]


# --- forwards --------------------------------------------------------------------------------------------------------
def fit_calibration(
    adapter: SpeechLM, rows: list[Row], style: str, layers: list[int | str], batch_items: int
) -> dict[int, CalibrationStats]:
    """Moment statistics of the S and T span states of the calibration `rows` at each of `layers` (resolved index
    -> stats), from unedited forwards, streamed through `MomentAccumulator` (float64, sample std)."""
    idx = sorted({resolve_layer(l, adapter.n_layers) for l in layers})
    acc = {c: MomentAccumulator((len(idx), adapter.hidden_size)) for c in "ST"}
    ran: list[str] = []  # the rows the spine ran (skipped ones left out)
    for batch in spine.run(adapter, rows, style, batch_items=batch_items, span_layers=idx, desc="calibration"):
        ran += [r.id for r in batch.rows]
        for c, fwd in batch.forwards.items():
            for h in fwd.span:  # [len(idx), n, d]
                acc[c].update(h)
    return {l: CalibrationStats(l, MomentStats.of(acc["S"], n), MomentStats.of(acc["T"], n), tuple(ran))
            for n, l in enumerate(idx)}


def _row(item: Item, scores: Scores, base: Scores, n_layers: int, **fields) -> dict:
    layer = fields.get("layer")
    row = {
        "id": item.id, "control": "none", "site": "none" if layer is None else _site(layer, n_layers),
        "select": "none", "op": "none", "metric": None, "select_layer": None, "r": None, "layer": None, "n_edited": 0,
        "merge_ratio": None, "lens_margin": None, "lens_entropy": None, **fields,
        "prediction": scores.pred, "correct": int(scores.pred == item.answer),
        "baseline_prediction": base.pred, "baseline_correct": int(base.pred == item.answer),
        "loglik": scores.logliks.tolist(), "baseline_loglik": base.logliks.tolist(),
    }
    return row


def _label(cond: Condition, layer: int | None = None, select_layer: int | None = None, control: str = "path") -> str:
    """The condition's name in the table: "angle bottom-3 @0" (selection other than cosine at the edited layer:
    "angle bottom-3 @0 [l2@5]"; a control: "angle bottom-3 @0 (random)"), "calibration per_dim @0",
    "redundancy r=2"."""
    if isinstance(cond, Edit):
        extra = "" if cond.metric == "cos" and select_layer == layer else f" [{cond.metric}@{select_layer}]"
        return f"{cond.op} {cond.select} @{layer}{extra}" + ("" if control == "path" else f" ({control})")
    if isinstance(cond, Calibration):
        return f"calibration {cond.stats_mode} @{layer}"
    if isinstance(cond, KVMerge):
        return (f"kv_merge @{cond.first}-{cond.last} cos>{cond.threshold:g} max {cond.max_ratio:g}"
                + ("" if control == "path" else f" ({control})"))
    return f"redundancy r={cond.r}"


def _control_edit(op: Callable, control: str, span: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                  text: torch.Tensor, other_text: torch.Tensor | None, generator: torch.Generator) -> RowEdit:
    """One item's edit under `control` ("path" or one of `CONTROLS`): op(h, target) at prompt positions span[sites].

    span [Ts] prompt positions of the speech span; i, j [m] the path's speech positions and text targets; text
    [Tt, d] this item's text states at the edited layer; other_text [Tt', d] its partner's (for "other_item").
    """
    if control == "other_item":
        sites, target = i, other_text[other_item_tokens(j, len(text), len(other_text)).to(other_text.device)]
    else:
        sites, j = control_sites(control, i, j, len(span), generator)
        target = text[j.to(text.device)]
    return RowEdit(span[sites], lambda h: op(h, target.to(h.dtype)))


def partner_rows(rows: Sequence[Row], pool: Sequence[Row], seed: int) -> list[Row]:
    """Each row's other-item partner: pool[sigma[p]] for the row at pool position p, sigma a seeded derangement of
    the pool (`other_item_partners`), so that a row's partner depends on the pool and seed only. ValueError naming
    a row missing from the pool."""
    position = {r.id: p for p, r in enumerate(pool)}
    if missing := [r.id for r in rows if r.id not in position]:
        raise ValueError(f"item {missing[0]}: not in the pool of other-item partners")
    sigma = other_item_partners(len(pool), seed)
    return [pool[int(sigma[position[r.id]])] for r in rows]


def _merge_runs(adapter: SpeechLM, cond: KVMerge, s_in: list, items: list[Item], seed: int
                ) -> dict[str, tuple[spine.Forward, dict[tuple[int, int], torch.Tensor]]]:
    """The S forwards of a KV merge ("path": by key similarity) and of its control ("random": as many merges per
    prompt and block as the path's, at adjacent pairs drawn per item and block), with their realised links."""
    path = spine.Merge(cond.blocks, lambda g, b, keys: similarity_links(keys, cond.threshold, cond.max_ratio))
    runs = {"path": (spine.forward(adapter, s_in, merge=path), path.links)}
    label = _label(cond, control="random")
    random = spine.Merge(cond.blocks, lambda g, b, keys: random_links(
        len(keys), int(path.links[g, b].sum()), item_generator(seed, label, items[g].id, str(b))))
    runs["random"] = (spine.forward(adapter, s_in, merge=random), random.links)
    return runs


def run_conditions(
    adapter: SpeechLM,
    rows: list[Row],
    style: str,
    norm: str,
    conditions: list[Condition],
    calibration_rows: list[Row] | None = None,
    *,
    batch_items: int,
    controls: Sequence[str] = (),
    seed: int = 0,
    partner_pool: Sequence[Row] | None = None,
) -> pd.DataFrame:
    """Re-score every row under every condition; returns the per-item table (`COLUMNS`), baselines included as
    conditions "S" and "T".

    Edit, Calibration and KVMerge rows compare with the unedited S prediction, Redundancy rows with the baseline T
    prediction (r = 1 reproduces it exactly). Every Edit also runs under each of `controls` (`CONTROLS`; seeded by
    `seed`, the item and the condition, so independent of batching; other-item partners drawn from `partner_pool`,
    default `rows`: see `partner_rows`); Calibration edits the whole span and has no site controls; a KVMerge runs
    with its random-pairs control (`_merge_runs`). Calibration statistics are fitted on `calibration_rows`, which
    must not share an item id with `rows` (ValueError naming them).
    """
    if not rows:
        raise ValueError("no items to run interventions on")
    if unknown := [c for c in controls if c not in CONTROLS]:
        raise ValueError(f"unknown control {unknown[0]!r} (known: {', '.join(CONTROLS)})")
    runs = ["path", *dict.fromkeys(controls)]  # each edit condition's runs: itself and its controls
    n_layers = adapter.n_layers
    items = [r.item for r in rows]
    edits = [(c, resolve_layer(c.layer, n_layers),
              resolve_layer(c.layer if c.select_layer is None else c.select_layer, n_layers, editable=False))
             for c in conditions if isinstance(c, Edit)]
    calibs = [(c, resolve_layer(c.layer, n_layers)) for c in conditions if isinstance(c, Calibration)]
    redundancy = list(dict.fromkeys(c for c in conditions if isinstance(c, Redundancy)))
    edits = list({_label(c, l, s): (c, l, s) for c, l, s in edits}.values())  # one run per distinct condition
    calibs = list({_label(c, l): (c, l) for c, l in calibs}.values())
    merges = list(dict.fromkeys(c for c in conditions if isinstance(c, KVMerge)))
    if bad := [c for c in merges if not 0 <= c.first <= c.last < n_layers]:
        raise ValueError(f"kv_merge blocks {bad[0].first}..{bad[0].last}: not a block range of 0..{n_layers - 1}")
    if unknown := [c for c in conditions if not isinstance(c, (Edit, Calibration, Redundancy, KVMerge))]:
        raise ValueError(f"unknown condition(s) {unknown}")
    ks = [c.k for c, *_ in edits if c.k is not None]
    if ks:
        k = max(ks)
        short = [(it.id, len(adapter.text_inputs(it, style).span)) for it in items]
        short = [(i, n) for i, n in short if n < k]
        if short:
            raise ValueError(f"bottom-k with k={k} is larger than the text span of item(s) "
                             + ", ".join(f"{i} ({n} tokens)" for i, n in short))
    stats: dict[int, CalibrationStats] = {}
    if calibs:
        if calibration_rows is None:
            raise ValueError("calibration conditions need calibration_rows (a held-out calibration split)")
        check_held_out([r.id for r in calibration_rows], [it.id for it in items])
        stats = fit_calibration(adapter, calibration_rows, style, [l for _, l in calibs], batch_items)
    record = sorted({l for _, l, _ in edits} | {l for _, _, l in edits})
    pool = rows if partner_pool is None else partner_pool
    partners = (dict(zip([r.id for r in rows], partner_rows(rows, pool, seed))) if edits and "other_item" in runs
                else None)

    out: list[dict] = []
    for batch in spine.run(adapter, rows, style, batch_items=batch_items, span_layers=record, desc="interventions"):
        if not batch.rows:  # every row of the step skipped
            continue
        its = batch.items
        s_in, rec_s, rec_t = batch.forwards["S"].inputs, batch.forwards["S"].span, batch.forwards["T"].span
        other_t = [None] * len(its) if partners is None else spine.forward(
            adapter, spine.condition_inputs(adapter, [partners[it.id] for it in its], style, "T"), span_layers=record
        ).span
        base_s = adapter.score_prefills(batch.forwards["S"].prefills, its, style, norm)
        base_t = adapter.score_prefills(batch.forwards["T"].prefills, its, style, norm)
        for it, s, t in zip(its, base_s, base_t):
            out.append(_row(it, s, s, n_layers, condition="S", label="S"))
            out.append(_row(it, t, t, n_layers, condition="T", label="T"))
        batch.forwards.clear()

        for cond, layer, sel_layer in edits:
            at, sel_at = record.index(layer), record.index(sel_layer)
            path = [select_edits(hs[sel_at], ht[sel_at], cond.select, cond.metric, it.id)
                    for it, hs, ht in zip(its, rec_s, rec_t)]
            for control in runs:
                label = _label(cond, layer, sel_layer, control)
                plan = {g: _control_edit(OPS[cond.op], control, x.span, i, j, ht[at], None if o is None else o[at],
                                         item_generator(seed, label, it.id))
                        for g, (it, x, (i, j), ht, o) in enumerate(zip(its, s_in, path, rec_t, other_t))}
                pre = spine.forward(adapter, s_in, edit=spine.Edit(layer, plan)).prefills
                scores = adapter.score_prefills(pre, its, style, norm)
                for g, (it, sc, b) in enumerate(zip(its, scores, base_s)):
                    out.append(_row(it, sc, b, n_layers, condition="edit",
                                    label=label, control=control, layer=layer, select=cond.select, op=cond.op,
                                    metric=cond.metric, select_layer=sel_layer, n_edited=len(plan[g].positions)))

        for cond, layer in calibs:
            params = stats[layer].params(cond.stats_mode)
            plan = {g: RowEdit(x.span, lambda h, p=params: moment_calibration(h, *p)) for g, x in enumerate(s_in)}
            pre = spine.forward(adapter, s_in, edit=spine.Edit(layer, plan)).prefills
            scores = adapter.score_prefills(pre, its, style, norm)
            for g, (it, sc, b) in enumerate(zip(its, scores, base_s)):
                out.append(_row(it, sc, b, n_layers, condition="calibration",
                                label=_label(cond, layer), layer=layer, select="span", op=cond.stats_mode,
                                n_edited=len(s_in[g].span)))

        for cond in merges:
            for control, (fwd, links) in _merge_runs(adapter, cond, s_in, its, seed).items():
                scores = adapter.score_prefills(fwd.prefills, its, style, norm)
                for g, (it, sc, b) in enumerate(zip(its, scores, base_s)):
                    n_merged = int(sum(links[g, blk].sum() for blk in cond.blocks))
                    out.append(_row(it, sc, b, n_layers, condition="kv_merge",
                                    label=_label(cond, control=control), control=control, layer=cond.first,
                                    select_layer=cond.last, select=f"cos>{cond.threshold:g}", op="kv_merge",
                                    metric=f"max {cond.max_ratio:g}", n_edited=n_merged,
                                    merge_ratio=realised_ratio(n_merged, len(s_in[g].span), len(cond.blocks))))

        for cond in redundancy:
            rep = [redundant_item(it, int(cond.r)) for it in its]
            fwd = spine.forward(adapter, [adapter.text_inputs(it, style) for it in rep], decision=True)
            lens = spine.read(adapter, [LogitLens()], "T", style, rep, fwd)
            scores = adapter.score_prefills(fwd.prefills, rep, style, norm)
            for g, (it, sc, b) in enumerate(zip(rep, scores, base_t)):
                out.append(_row(it, sc, b, n_layers, condition="redundancy",
                                label=_label(cond), op="repeat", r=int(cond.r),
                                **{k: lens[k][g].tolist() for k in ("lens_margin", "lens_entropy")}))

    table = pd.DataFrame(out)[COLUMNS]
    table["merge_ratio"] = table["merge_ratio"].astype("float64")
    for col in ("layer", "select_layer", "r"):
        table[col] = table[col].astype("Int64")
    return table
