"""The three training phases, each a function of (model, data, recipe): text LM, encoder CTC, alignment.

Every phase seeds torch from the recipe and draws its batches from its own seeded generator, so a run is
deterministic on one machine.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor
from transformers.masking_utils import create_bidirectional_mask

from modgap.lab.data import (
    LossWeights, Sequence, SpeechSet, collate, speech_batch, token_logp, training_sequence, words,
)
from modgap.lab.recipe import Recipe

Model = Qwen2AudioForConditionalGeneration
PHASE_SEEDS = {"text": 1, "ctc": 2, "frozen": 3, "full": 4, "spread": 5}


def text_weights(recipe: Recipe) -> LossWeights:
    """Text LM pretraining and replay: every token, plus extra weight on the answer turn."""
    return LossWeights(answer=recipe.text_answer_weight, transcript=0.0, lm=1.0)


def speech_weights(recipe: Recipe) -> LossWeights:
    """Alignment: the answer turn and the transcript turn after spoken questions."""
    return LossWeights(answer=1.0, transcript=recipe.transcript_weight, lm=0.0)


def batches(n: int, size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of row indices: each epoch a fresh seeded permutation of range(n)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for start in range(0, n - size + 1 if n >= size else 1, size):
            yield order[start : start + size]


def weighted_nll(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over rows of sum_t weight_t * NLL_t; logits [B, T, V], labels and weights [B, T] (unshifted)."""
    return -(token_logp(logits, labels) * weights[:, 1:]).sum() / logits.shape[0]


def sequence_loss(model: Model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weighted NLL of a batch from `data.collate` or `data.speech_batch`."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "weights")}
    logits = model(**inputs).logits
    return weighted_nll(logits, batch["labels"], batch["weights"])


def _optimize(
    groups: list[dict], steps: int, recipe: Recipe, loss_fn: Callable[[int], torch.Tensor], desc: str,
    after_step: Callable[[int], None] | None = None,
) -> dict:
    """AdamW with linear warmup and cosine decay to 10%; returns the losses and the wall time."""
    opt = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    warm = max(1, int(recipe.warmup * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    params = [p for g in groups for p in g["params"]]
    losses, start = [], time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc=desc, mininterval=5)
    for step in bar:
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.clip)
        opt.step()
        sched.step()
        losses.append(round(loss.item(), 5))
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
        if after_step:
            after_step(step)
    return {"losses": losses, "seconds": round(time.perf_counter() - start, 1)}


def _trainable(module: torch.nn.Module, on: bool) -> list[torch.nn.Parameter]:
    """Set requires_grad on `module`'s parameters and return them (empty when `on` is False)."""
    for p in module.parameters():
        p.requires_grad_(on)
    return list(module.parameters()) if on else []


def _audio_params(model: Model) -> list[torch.nn.Parameter]:
    """The audio tower's parameters (its fixed position table excluded), made trainable."""
    params = [p for n, p in model.model.audio_tower.named_parameters() if not n.startswith("embed_positions")]
    for p in params:
        p.requires_grad_(True)
    return params


def pretrain_text(model: Model, seqs: list[Sequence], pad_id: int, recipe: Recipe, phase: str = "text") -> dict:
    """Phase 1: train the language model (decoder + lm_head) on text sequences; the audio side is untouched.

    `phase` "text" runs `recipe.text_steps`, "spread" (the continuation on partly spread questions) `spread_steps`.
    """
    seed = recipe.seed + PHASE_SEEDS[phase]
    torch.manual_seed(seed)
    model.train()
    _trainable(model, False)
    lm = _trainable(model.model.language_model, True) + _trainable(model.lm_head, True)
    order = batches(len(seqs), recipe.text_batch, seed)

    def loss(step: int) -> torch.Tensor:
        return sequence_loss(model, collate([seqs[i] for i in next(order)], pad_id))

    steps = recipe.text_steps if phase == "text" else recipe.spread_steps
    return _optimize([{"params": lm, "lr": recipe.text_lr}], steps, recipe, loss, f"{phase} LM")


def encode(model: Model, features: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio tower outputs [B, P, d_audio] (padding masked exactly as in the model's forward) and valid lengths [B]."""
    tower = model.model.audio_tower
    conv_len, out_len = tower._get_feat_extract_output_lengths(frames)
    width = features.shape[-1] // 2
    mask2d = (torch.arange(width)[None, :] < conv_len[:, None]).long()
    dummy = torch.zeros(features.shape[0], width, 1)
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask2d)
    return tower(features, attention_mask=mask).last_hidden_state, out_len


def ctc_targets(processor: Qwen2AudioProcessor, sset: SpeechSet) -> list[list[int]]:
    """Word ids of every spoken question."""
    return [words(processor, it.question) for it in sset.items]


def pretrain_audio(model: Model, sset: SpeechSet, processor: Qwen2AudioProcessor, recipe: Recipe) -> dict:
    """Phase 2: train the audio tower with CTC on word ids through a throwaway linear head (blank = pad id)."""
    torch.manual_seed(recipe.seed + PHASE_SEEDS["ctc"])
    blank = processor.tokenizer.pad_token_id
    head = torch.nn.Linear(model.config.audio_config.d_model, len(processor.tokenizer))
    model.train()
    _trainable(model, False)
    params = _audio_params(model) + list(head.parameters())
    targets = ctc_targets(processor, sset)
    order = batches(len(sset.items), recipe.ctc_batch, recipe.seed + PHASE_SEEDS["ctc"])

    def loss(step: int) -> torch.Tensor:
        rows = next(order)
        hidden, lengths = encode(model, sset.features[rows].float(), sset.frames[rows])
        logp = torch.log_softmax(head(hidden), -1).transpose(0, 1)  # [P, B, V]
        tgt = [targets[r] for r in rows]
        flat = torch.tensor([t for seq in tgt for t in seq])
        return F.ctc_loss(logp, flat, lengths, torch.tensor([len(t) for t in tgt]), blank=blank, zero_infinity=True)

    log = _optimize([{"params": params, "lr": recipe.ctc_lr}], recipe.ctc_steps, recipe, loss, "encoder CTC")
    model.eval()
    log["train_wer"] = ctc_wer(model, head, sset, targets, blank)
    if recipe.projector_fit:
        log["projector_r2"] = fit_projector(model, head, sset)
    return log


@torch.no_grad()
def fit_projector(model: Model, head: torch.nn.Linear, sset: SpeechSet, n: int = 600, ridge: float = 1e-3) -> float:
    """Ridge-fit the projector so each audio position lands on its CTC-posterior-weighted LM input embedding.

    Uses `n` items spread over the set; returns the fit's R^2. The alignment phase then starts from audio that
    already looks like the question's words (and blank positions like the blank/pad embedding).
    """
    rows = torch.linspace(0, len(sset.items) - 1, min(n, len(sset.items))).long()
    hs = []
    for chunk in rows.split(100):
        hidden, lengths = encode(model, sset.features[chunk].float(), sset.frames[chunk])
        hs.append(hidden[torch.arange(hidden.shape[1])[None, :] < lengths[:, None]])
    h = torch.cat(hs).double()
    embed = model.get_input_embeddings().weight.double()
    target = torch.softmax(head(h.float()).double(), -1) @ embed
    x = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
    w = torch.linalg.solve(x.T @ x + ridge * len(h) * torch.eye(x.shape[1], dtype=h.dtype), x.T @ target)
    linear = model.model.multi_modal_projector.linear
    linear.weight.copy_(w[:-1].T.float())
    linear.bias.copy_(w[-1].float())
    residual = ((x @ w - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
    return round(float(1 - residual), 4)


@torch.no_grad()
def ctc_wer(model: Model, head: torch.nn.Linear, sset: SpeechSet, targets: list[list[int]], blank: int) -> float:
    """Greedy CTC word error rate (edit distance over reference words) on up to 200 items."""
    n = min(len(targets), 200)
    hidden, lengths = encode(model, sset.features[:n].float(), sset.frames[:n])
    best = head(hidden).argmax(-1)
    errors = words_total = 0
    for r in range(n):
        path = best[r, : lengths[r]].tolist()
        hyp = [t for k, t in enumerate(path) if t != blank and (k == 0 or t != path[k - 1])]
        errors += _edit_distance(hyp, targets[r])
        words_total += len(targets[r])
    return round(errors / max(1, words_total), 4)


def _edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def align(
    model: Model, sset: SpeechSet, text: list[Sequence], processor: Qwen2AudioProcessor, recipe: Recipe,
    strategy: str, save: Callable[[int], None],
) -> dict:
    """Phase 3: train audio tower + projector on spoken questions (answer + transcript turns).

    `frozen`: the language model is fixed. `full`: it trains too (at `lm_lr`), with a replayed text LM batch each
    step. `save(step)` is called at every step in `recipe.checkpoints`.
    """
    if strategy not in ("frozen", "full"):
        raise ValueError(f"unknown strategy {strategy!r}")
    seed = recipe.seed + PHASE_SEEDS[strategy]
    torch.manual_seed(seed)
    pad = processor.tokenizer.pad_token_id
    model.train()
    _trainable(model, False)
    audio = _audio_params(model) + _trainable(model.model.multi_modal_projector, True)
    groups = [{"params": audio, "lr": recipe.align_lr}]
    if strategy == "full":
        lm = _trainable(model.model.language_model, True) + _trainable(model.lm_head, True)
        groups.append({"params": lm, "lr": recipe.lm_lr})
    w = speech_weights(recipe)
    seqs = [training_sequence(processor, u, it, w) for u, it in zip(sset.users, sset.items)]
    order = batches(len(seqs), recipe.align_batch, seed)
    replay = batches(len(text), recipe.align_batch, seed + 100)

    def loss(step: int) -> torch.Tensor:
        rows = next(order)
        total = sequence_loss(model, speech_batch(sset, rows, [seqs[r] for r in rows], pad))
        if strategy == "full" and recipe.replay_weight > 0:
            total = total + recipe.replay_weight * sequence_loss(model, collate([text[i] for i in next(replay)], pad))
        return total

    def after(step: int) -> None:
        if step in recipe.checkpoints:
            model.eval()
            save(step)
            model.train()

    log = _optimize(groups, recipe.align_steps, recipe, loss, f"align {strategy}", after)
    model.eval()
    return log
