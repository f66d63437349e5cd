"""The forward spine: the one place that runs a model over corpus rows (`SpeechLM.prefill_batch`).

`forward` runs one batch of prompts of one condition, optionally recording hook-point states (over each prompt's
span, or at the decision position of every layer) and optionally under an edit. `run` walks a shard's rows in
batches, runs S and T through `forward`, hands each readout what it needs, generates an answer for the items that
ask for one (`SpeechLM.generate`) and yields one `Batch` per step. The states dump, the calibration fit and every
intervention consume it; scoring stays with the consumer (`SpeechLM.score_prefills` on the yielded prefills,
`modgap.evaluators` on the responses). A row whose prompt cannot be built in some condition (an `AudioError`:
unreadable recording, longer than the window under long_audio "reject", filling no audio position) is skipped in
every condition, so S and T stay paired, and reported in its step's `Batch.skipped` with its reason. The prompts of
the next steps are built (`batch_inputs`) by `workers` forked worker processes of a `torch.utils.data.DataLoader`
(two steps ahead each; 0: in this process, between forwards) while the current step runs; the workers share the loaded
adapter's memory (its weights are not copied) and run one torch thread each.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from modgap.corpus.audio import AudioError
from modgap.corpus.items import Item
from modgap.corpus.table import Row
from modgap.models.base import Inputs, Prefill, SpeechLM
from modgap.models.attention import last_query_attention
from modgap.models.hooks import Planner, RowEdit, edit_rows, merge_kv, record_attention, record_rows
from modgap.states.readouts import Readout, Seen

CONDITIONS = ("S", "T")
log = logging.getLogger("modgap")


@dataclass
class Edit:
    """Replace rows of prompts at hidden state `layer` (see `modgap.models.hooks.edit_rows`)."""

    layer: int
    rows: dict[int, RowEdit]


@dataclass
class Merge:
    """KV token merging in decoder `blocks` over each prompt's span (see `modgap.models.hooks.merge_kv`); `links`
    is filled by the forward: {(prompt, block): links [n - 1]}."""

    blocks: list[int]
    planner: Planner
    links: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


@dataclass
class Forward:
    """One batch of prompts after its forward.

    prefills: one per prompt (with span states [L+1, n, d] of `output_hidden_states` when `hidden`); span: per
    prompt [len(span_layers), n, d] hook-point states over the span (None when none were asked); decision:
    [B, L+1, d] hook-point states at each prompt's last position (the decision position) when asked; attention: per
    prompt [L, heads, T_g] the decision position's attention weights over its prompt in blocks 1..L, when asked.
    """

    inputs: list[Inputs]
    prefills: list[Prefill]
    span: list[torch.Tensor | None]
    decision: torch.Tensor | None = None
    attention: list[torch.Tensor] | None = None


def speech_inputs(adapter: SpeechLM, row: Row, style: str) -> Inputs:
    """Condition S of a corpus row spoken in `style`: its recording, with its word spans for the positions' word
    indices."""
    return adapter.speech_inputs(row.item, row.wave(), style, row.spans)


def condition_inputs(adapter: SpeechLM, rows: Sequence[Row], style: str, condition: str) -> list[Inputs]:
    """The prompts of `rows` in one condition."""
    if condition == "S":
        return [speech_inputs(adapter, r, style) for r in rows]
    return [adapter.text_inputs(r.item, style) for r in rows]


@dataclass(frozen=True)
class Skipped:
    """An item left out of every condition: the condition whose prompt could not be built and why (one line naming
    the item)."""

    id: str
    condition: str
    reason: str


class InputError(RuntimeError):
    """A prompt that failed to build for another reason than its audio (a bug, not a bad item): one line naming the
    item and condition."""


Built = tuple[list[Row], dict[str, list[Inputs]], list[Skipped]]


def batch_inputs(adapter: SpeechLM, rows: Sequence[Row], style: str, conditions: Sequence[str]) -> Built:
    """The rows whose prompt builds in every condition, their prompts per condition, and the other rows as `Skipped`
    (the first condition whose prompt raised an `AudioError`, and its message); any other error is an `InputError`."""
    kept: list[Row] = []
    inputs: dict[str, list[Inputs]] = {c: [] for c in conditions}
    skipped: list[Skipped] = []
    for row in rows:
        built = {}
        for c in conditions:
            try:
                built[c] = condition_inputs(adapter, [row], style, c)[0]
            except AudioError as e:
                skipped.append(Skipped(row.id, c, str(e)))
                log.warning("skipped in every condition: %s", e)
                break
            except Exception as e:
                raise InputError(f"item {row.id}: its {c} prompt failed to build: {type(e).__name__}: {e}") from e
        else:
            kept.append(row)
            for c, x in built.items():
                inputs[c].append(x)
    return kept, inputs, skipped


class Steps(Dataset):
    """Step i of `run` over `rows`: the `batch_inputs` of its `batch_items` rows, or the `InputError` it raised
    (returned, so that it reaches the main process as its one line)."""

    def __init__(self, adapter: SpeechLM, rows: Sequence[Row], style: str, batch_items: int,
                 conditions: Sequence[str]) -> None:
        self.adapter, self.rows, self.style, self.batch_items, self.conditions = (
            adapter, rows, style, batch_items, conditions)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_items)

    def __getitem__(self, step: int) -> Built | InputError:
        chunk = self.rows[step * self.batch_items : (step + 1) * self.batch_items]
        try:
            return with_tensors(batch_inputs(self.adapter, chunk, self.style, self.conditions), torch.Tensor.numpy)
        except InputError as e:
            return e


def with_tensors(step: Built, convert: Callable) -> Built:
    """`step` with `convert` applied to its prompts' tensors (model inputs and spans). The workers send them as numpy
    arrays, which pickle by value into the step's one message; torch would send each tensor through a shared-memory
    segment of its own, some 20x dearer for a batch of small tensors."""
    kept, inputs, skipped = step
    return kept, {c: [replace(x, model_inputs={k: convert(v) for k, v in x.model_inputs.items()}, span=convert(x.span))
                      for x in xs] for c, xs in inputs.items()}, skipped


def _as_built(step: Built | InputError) -> Built | InputError:
    """The DataLoader's collate function: a step is already one batch."""
    return step


def built_steps(adapter: SpeechLM, rows: Sequence[Row], style: str, batch_items: int, conditions: Sequence[str],
                workers: int) -> Iterator[Built]:
    """Each step's `batch_inputs`, in order, built by `workers` forked processes ahead of the consumer (0: here, on
    demand); an `InputError` raised here."""
    loader = DataLoader(Steps(adapter, rows, style, batch_items, conditions), batch_size=None, collate_fn=_as_built,
                        num_workers=workers, multiprocessing_context="fork" if workers else None)
    for step in loader:
        if isinstance(step, InputError):
            raise step
        yield with_tensors(step, torch.from_numpy)


def forward(
    adapter: SpeechLM,
    inputs: list[Inputs],
    *,
    hidden: bool = False,
    span_layers: Sequence[int] = (),
    decision: bool = False,
    attention: bool = False,
    edit: Edit | None = None,
    merge: Merge | None = None,
) -> Forward:
    """One `prefill_batch` of `inputs` (one condition), recording what is asked, under `edit` and `merge` if given."""
    last = [torch.tensor([int(x.model_inputs["input_ids"].shape[1]) - 1]) for x in inputs]
    with ExitStack() as stack:
        if edit is not None:
            stack.enter_context(edit_rows(adapter, edit.layer, inputs, edit.rows))
        if merge is not None:
            merge.links = stack.enter_context(merge_kv(adapter, merge.blocks, inputs, [x.span for x in inputs],
                                                       merge.planner))
        span = (stack.enter_context(record_rows(adapter, list(span_layers), inputs, [x.span for x in inputs]))
                if span_layers else None)
        at_decision = (stack.enter_context(record_rows(adapter, list(range(adapter.n_layers + 1)), inputs, last))
                       if decision else None)
        rows = stack.enter_context(record_attention(adapter, inputs, last_query_attention)) if attention else None
        prefills = adapter.prefill_batch(inputs, hidden=hidden)
    return Forward(
        inputs, prefills, span if span is not None else [None] * len(inputs),
        None if at_decision is None else torch.stack([h[:, 0] for h in at_decision]), rows,
    )


def read(adapter: SpeechLM, readouts: Sequence[Readout], condition: str, style: str, items: list[Item], fwd: Forward
         ) -> dict[str, np.ndarray]:
    """Every field of `readouts` on one forward of `items` in `condition` (field -> [B, *shape])."""
    seen = Seen(adapter, condition, style, items, fwd.inputs, fwd.prefills, fwd.decision, fwd.attention)
    return {k: v for r in readouts for k, v in r(seen).items()}


@dataclass
class Batch:
    """One step of `run`: the rows run and their items, per condition the forward, each readout field `[B, *shape]`
    and each item's generated answer (None where none was asked), and the step's skipped rows. A step whose rows were
    all skipped has no rows and no forwards."""

    rows: list[Row]
    forwards: dict[str, Forward]
    readouts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    responses: dict[str, list[str | None]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def items(self) -> list[Item]:
        return [r.item for r in self.rows]


def run(
    adapter: SpeechLM,
    rows: Sequence[Row],
    style: str,
    *,
    batch_items: int,
    conditions: Sequence[str] = CONDITIONS,
    hidden: bool = False,
    span_layers: Sequence[int] = (),
    readouts: Sequence[Readout] = (),
    desc: str = "forward",
    done: int = 0,
    respond: Callable[[Item], bool] | None = None,
    decoding: Mapping[str, object] | None = None,
    workers: int = 0,
) -> Iterator[Batch]:
    """Run `rows` in batches of `batch_items` through every condition and yield each `Batch`, readouts computed;
    rows whose prompt cannot be built are skipped (`batch_inputs`).

    `done` rows count as already finished (a resumed run passes the rows after them and the bar starts there).
    Items for which `respond` is true get a generated answer per condition, `SpeechLM.generate(**decoding)`, one
    item at a time (its own prompt, no padding). `workers` processes build the next steps' prompts meanwhile
    (`built_steps`; 0: in this process).
    """
    needs = {n for r in readouts for n in r.needs}
    with tqdm(total=len(rows) + done, initial=done, desc=desc, mininterval=5) as bar:
        for kept, inputs, skipped in built_steps(adapter, rows, style, batch_items, conditions, workers):
            batch = Batch(kept, {}, skipped=skipped)
            for c in conditions if kept else ():
                fwd = forward(adapter, inputs[c], hidden=hidden, span_layers=span_layers,
                              decision="decision_states" in needs, attention="attention_rows" in needs)
                batch.forwards[c] = fwd
                batch.readouts[c] = read(adapter, readouts, c, style, batch.items, fwd)
                batch.responses[c] = [adapter.generate(x, **decoding) if respond is not None and respond(it) else None
                                      for x, it in zip(fwd.inputs, batch.items)]
            yield batch
            bar.update(len(kept) + len(skipped))
