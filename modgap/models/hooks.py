"""The package's only hook utility, in the spirit of baukit's nethook: read or replace hidden state `layer` of a
`SpeechLM` during a forward, at given rows and positions of a (left-padded) batch, with every handle removed on
exit (one `contextlib.ExitStack` per context, also on exceptions); `record_attention` also sees what each block's
self-attention receives.

Hidden state `layer` is the hook point of `SpeechLM.hook_module`: layer 0 the merged input embeddings (a forward
pre-hook on block 1), layer l the output of decoder block l (for l = L before the final norm, unlike the last of
`output_hidden_states`). An edit of question positions at layer L cannot change the option scores (nothing reads
them: the logits come from the last prompt position, the KV caches from layers < L).

Rows and positions refer to the prompts as given: row g is `inputs[g]` and positions index its own, unpadded
sequence. The hooks map them onto each forward call: `prefill_batch` left-pads every prompt to the longest of its
call (padding = call width - prompt length), and families that cannot batch audio run one call per prompt; both are
handled by counting rows across calls. Open a context around the prompt forward only (`modgap.states.spine.forward`
does) and score the options after it has closed.

`merge_kv` hooks a block's attention instead (its `k_proj`/`v_proj` outputs and its rotary table) for P2's KV token
merging.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from modgap.interventions.kv_merge import anchors_of, group_means
from modgap.models.base import Inputs, SpeechLM

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def add_hook(adapter: SpeechLM, layer: int, fn: HookFn) -> RemovableHandle:
    """Call `fn(h)` on hidden state `layer` ([B, T, d]) in every forward; a returned tensor replaces it.
    Prefer `hooked`, which always removes the handle."""
    module = adapter.hook_module(layer)
    if layer == 0:
        def pre(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)

        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_module: nn.Module, _args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple | None:
        new = fn(output[0] if isinstance(output, tuple) else output)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return module.register_forward_hook(post)


@contextmanager
def hooked(adapter: SpeechLM, fns: dict[int, HookFn]) -> Iterator[None]:
    """`fns[layer]` hooked on hidden state `layer` for the duration of the block; every handle removed on exit."""
    with ExitStack() as stack:
        for layer, fn in fns.items():
            stack.callback(add_hook(adapter, layer, fn).remove)
        yield


@dataclass
class RowEdit:
    """Replace hidden rows `positions` ([m] long, in the prompt's own sequence) of one prompt by `fn(h)`, where
    h [m, d] are their current values at the hooked layer and the result is [m, d]."""

    positions: torch.Tensor
    fn: Callable[[torch.Tensor], torch.Tensor]


class _RowCounter:
    """Maps each hook call's batch rows to prompts (row offset across calls) and their left padding."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths, self.seen = lengths, 0

    def rows(self, h: torch.Tensor) -> Iterator[tuple[int, int, int]]:
        """(batch row, prompt index, padding) of each row of `h` [B, W, d]."""
        b, width = h.shape[0], h.shape[1]
        if self.seen + b > len(self.lengths):
            raise RuntimeError(f"hook saw {self.seen + b} prompt rows, expected {len(self.lengths)}: "
                               "was the context left open around a forward that is not the prompt's?")
        for r in range(b):
            g = self.seen + r
            pad = width - self.lengths[g]
            if pad < 0:
                raise RuntimeError(f"hook saw a forward of width {width} for prompt {g} of length {self.lengths[g]}")
            yield r, g, pad
        self.seen += b

    def check_done(self) -> None:
        if self.seen != len(self.lengths):
            raise RuntimeError(f"hook saw {self.seen} prompt rows, expected {len(self.lengths)}")


def prompt_lengths(inputs: list[Inputs]) -> list[int]:
    return [int(x.model_inputs["input_ids"].shape[1]) for x in inputs]


@contextmanager
def edit_rows(adapter: SpeechLM, layer: int, inputs: list[Inputs], edits: dict[int, RowEdit]) -> Iterator[None]:
    """Edit hidden state `layer` during a forward of `inputs` (one `prefill_batch(inputs)` or `prefill` each, in
    order): prompt g's rows `edits[g].positions` become `edits[g].fn(current rows)`; other prompts are untouched.

    The hidden tensor is not modified in place: the hook returns an edited copy. On a normal exit it checks that
    exactly the prompts of `inputs` went through it.
    """
    counter = _RowCounter(prompt_lengths(inputs))

    def fn(h: torch.Tensor) -> torch.Tensor | None:
        out = None
        for r, g, pad in counter.rows(h):
            if g not in edits:
                continue
            e = edits[g]
            pos = e.positions.to(h.device) + pad
            new = e.fn(h[r, pos])
            if new.shape != (len(pos), h.shape[-1]):
                raise ValueError(f"edit of prompt {g} returned shape {tuple(new.shape)}, "
                                 f"expected {(len(pos), h.shape[-1])}")
            if out is None:
                out = h.clone()
            out[r, pos] = new.to(h.dtype)
        return out

    with hooked(adapter, {layer: fn}):
        yield
    counter.check_done()


@contextmanager
def record_rows(
    adapter: SpeechLM, layers: list[int], inputs: list[Inputs], positions: list[torch.Tensor]
) -> Iterator[list[torch.Tensor]]:
    """Record hidden states `layers` at `positions[g]` of each prompt during a forward of `inputs`, unedited.

    Yields a list that is filled on exit: per prompt a [len(layers), m_g, d] tensor (model dtype, on the adapter's
    device, whichever device each layer runs on).
    """
    counters = {l: _RowCounter(prompt_lengths(inputs)) for l in layers}
    got: dict[int, dict[int, torch.Tensor]] = {l: {} for l in layers}

    def recorder(l: int) -> HookFn:
        def fn(h: torch.Tensor) -> None:
            for r, g, pad in counters[l].rows(h):
                got[l][g] = h[r, positions[g].to(h.device) + pad].detach().to(adapter.device, copy=True)
        return fn

    result: list[torch.Tensor] = []
    with hooked(adapter, {l: recorder(l) for l in layers}):
        yield result
    for c in counters.values():
        c.check_done()
    result.extend(torch.stack([got[l][g] for l in layers]) for g in range(len(inputs)))


Planner = Callable[[int, int, torch.Tensor], torch.Tensor]  # (prompt g, block b, span keys [n, d]) -> links [n - 1]


def _at_anchors(table: torch.Tensor, plans: dict[int, tuple[torch.Tensor, torch.Tensor]], batch: int) -> torch.Tensor:
    """A copy of a rotary table ([..., B or 1, T, d_head], batch at dim -3) where each planned row's span positions
    take the entry of their group's anchor position."""
    shape = list(table.shape)
    shape[-3] = batch
    out = table.expand(shape).clone()
    for r, (pos, anchors) in plans.items():
        out[..., r, pos, :] = out[..., r, pos[anchors], :]
    return out


@contextmanager
def merge_kv(adapter: SpeechLM, blocks: list[int], inputs: list[Inputs], spans: list[torch.Tensor],
             planner: Planner) -> Iterator[dict[tuple[int, int], torch.Tensor]]:
    """KV token merging in the attention of decoder `blocks` (0-based) during a forward of `inputs`: in each block,
    `planner(g, b, keys)` gets prompt g's span keys (the block's `k_proj` output at `spans[g]`, pre-rotary, every
    key head concatenated, [n, d_kv]) and returns links [n - 1] (`modgap.interventions.kv_merge`); each merged group's
    key and value projections are replaced at every one of its positions by the group's mean, and every member takes
    the rotary position of the group's first position (queries included), so the m members hold identical keys and
    values: exactly the attention of one merged entry with a +log m logit bias, for every query and attention
    implementation, with the same in the KV cache the options are scored from. Span queries inside a group see the
    whole group (its later members included). A plan without links leaves the block untouched (bit for bit).

    Yields a dict filled during the forward: {(g, b): links [n - 1]} for every prompt and block.
    """
    got: dict[tuple[int, int], torch.Tensor] = {}
    counters = {b: _RowCounter(prompt_lengths(inputs)) for b in blocks}

    def block_hooks(b: int, attn: nn.Module, stack: ExitStack) -> None:
        plans: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # batch row -> (positions [n], anchors [n])

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            plans.clear()
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            rows = list(counters[b].rows(h))
            keys = module.k_proj(h)  # [B, W, d_kv]; no plan yet, so the projection hook leaves it alone
            for r, g, pad in rows:
                pos = spans[g].to(h.device) + pad
                links = planner(g, b, keys[r, pos]).cpu()
                got[(g, b)] = links
                if links.any():
                    plans[r] = (pos, anchors_of(links).to(h.device))
            if not plans:
                return None
            rotary = tuple(_at_anchors(t, plans, h.shape[0]) for t in kwargs["position_embeddings"])
            return args, {**kwargs, "position_embeddings": rotary}

        def project(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not plans:
                return None
            new = out.clone()
            for r, (pos, anchors) in plans.items():
                new[r, pos] = group_means(out[r, pos], anchors)
            return new

        stack.callback(attn.register_forward_pre_hook(pre, with_kwargs=True).remove)
        stack.callback(attn.k_proj.register_forward_hook(project).remove)
        stack.callback(attn.v_proj.register_forward_hook(project).remove)
        stack.callback(attn.register_forward_hook(lambda *_: plans.clear()).remove)

    with ExitStack() as stack:
        for b in blocks:
            block_hooks(b, adapter.layers[b].self_attn, stack)
        yield got
    for c in counters.values():
        c.check_done()


AttentionFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def record_attention(adapter: SpeechLM, inputs: list[Inputs], fn: AttentionFn) -> Iterator[list[torch.Tensor]]:
    """At every decoder block's self-attention (`layers[l - 1].self_attn`, a forward pre-hook), during a forward of
    `inputs`: `fn(module, hidden [T_g, d], cos [T_g, hd], sin [T_g, hd])` on each prompt's own rows, its padding cut
    off, where hidden is the module's input and (cos, sin) its `position_embeddings`.

    Yields a list that is filled on exit: per prompt the results of blocks 1..L stacked ([L, ...], on the adapter's
    device). Nothing is modified.
    """
    blocks = range(1, adapter.n_layers + 1)
    counters = {l: _RowCounter(prompt_lengths(inputs)) for l in blocks}
    got: dict[int, dict[int, torch.Tensor]] = {l: {} for l in blocks}

    def recorder(l: int) -> Callable[[nn.Module, tuple, dict], None]:
        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            for r, g, pad in counters[l].rows(h):
                got[l][g] = fn(module, h[r, pad:], cos[r, pad:], sin[r, pad:]).to(adapter.device)
        return pre

    result: list[torch.Tensor] = []
    with ExitStack() as stack:
        for l in blocks:
            attn = adapter.layers[l - 1].self_attn
            stack.callback(attn.register_forward_pre_hook(recorder(l), with_kwargs=True).remove)
        yield result
    for c in counters.values():
        c.check_done()
    result.extend(torch.stack([got[l][g] for l in blocks]) for g in range(len(inputs)))
