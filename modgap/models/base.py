"""One interface for every speech LLM: S/T inputs with their spans, hidden states, hook points and option scoring.

A family adapter (one module each) only says how to load its preprocessing, turn a 16 kHz waveform into the model's
audio inputs and how many LLM positions they fill, and how long its audio window is. Everything else is shared here.

Conventions (see METHODS.md): S puts the audio in the user turn, T puts `spoken_text(item, style)` there; both use the
model's own chat template with the same system prompt, instruction and answer cue. The span is the question content
only: the audio positions (S) or the transcript tokens (T), as indices into the full input sequence. Hidden state 0 is
the LLM input embeddings (for S with the projected audio features scattered in), hidden state l is the output of
decoder block l, exactly as `output_hidden_states=True` returns them (the last one after the final norm).
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from modgap.corpus.audio import AudioError
from modgap.corpus.items import LETTERS, OPEN_TASKS, Item, Style, spoken_text, words_of
from modgap.corpus.timing import SAMPLE_RATE
from modgap.devices import resolve_device

Condition = Literal["S", "T"]
LongAudio = Literal["reject", "window"]
Norm = Literal["none", "tokens", "chars"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LONG_AUDIO = ("reject", "window")
NORMS = ("none", "tokens", "chars")
_SENTINEL = "\ue000"  # a private-use character: marks where the user content lands in the rendered template
_AUDIO_REF = "question.wav"  # the audio part's reference; templates only test for its presence
_PROBE = Item("probe", "probe", "Which one is the probe?", ["this one", "that one"], 0)  # renders `prompt_ids`


class LongAudioError(AudioError):
    """Audio longer than the model's window with `long_audio="reject"`; the message names the item and duration."""


@dataclass(frozen=True)
class Prompt:
    """What surrounds the question content, identical in S and T.

    system: a system message (None: whatever the template does without one); instruction: per item style, a text
    part after the question in the user turn of a multiple-choice item (write your own separator, e.g.
    "\\nAnswer with a letter."; a style it lacks or maps to None: none; open tasks never get one); cue: text appended
    after the template's generation prompt, after which options are scored and generation starts.
    """

    system: str | None = None
    instruction: Mapping[str, str | None] = field(default_factory=dict)
    cue: str = ""

    def instruction_for(self, item: Item, style: Style) -> str | None:
        """The instruction `item` is asked with in `style` (None for open tasks, which are answered by generation)."""
        return None if item.task in OPEN_TASKS else self.instruction.get(style)


@dataclass
class AudioInputs:
    """A waveform prepared for the model: audio kwargs for `model(...)`, placeholder count, content positions.

    n_content <= n_placeholders: positions past n_content hold only padding (Voxtral pads to whole windows).
    """

    tensors: dict[str, torch.Tensor]
    n_placeholders: int
    n_content: int


@dataclass
class Inputs:
    """One prompt for one item and condition.

    model_inputs: batch-of-one kwargs for `model(**model_inputs)`: input_ids and attention_mask [1, T], plus the
    audio features for S. span: [n] long, the question content's positions in the T-long sequence. words: [n] index
    into `words_of(transcript)` of each span position, -1 outside any word (None for S without word timings).
    """

    item_id: str
    condition: Condition
    text: str
    model_inputs: dict[str, torch.Tensor]
    span: torch.Tensor
    words: np.ndarray | None = None


@dataclass
class Prefill:
    """The prompt after one forward: next-token log-probs [V] (float32), its KV cache, and span hidden states
    [L+1, n, d] when requested."""

    inputs: Inputs
    logprobs: torch.Tensor
    cache: Cache
    hidden: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.inputs.model_inputs["input_ids"].shape[1])


@dataclass
class Scores:
    """Per option (choice order): summed log-likelihood, token and character counts, and the prediction under
    `norm` (argmax of loglik, loglik / tokens or loglik / chars)."""

    logliks: np.ndarray
    n_tokens: np.ndarray
    n_chars: np.ndarray
    norm: Norm
    pred: int = field(init=False)

    def __post_init__(self) -> None:
        self.pred = int(np.argmax(normalized(self.logliks, self.n_tokens, self.n_chars, self.norm)))


class SpeechLM:
    """A loaded speech LLM behind one interface. Subclasses set `family`, `model_class` and the audio methods."""

    family: ClassVar[str]
    model_class: ClassVar[type[PreTrainedModel]]
    content_as_string: ClassVar[bool] = False  # the template wants a string user turn (audio as its token's text)
    batch_audio: ClassVar[bool] = True  # S items can share a forward: their audio tensors concatenate along dim 0

    def __init__(
        self,
        path: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        long_audio: LongAudio,
        prompt: Prompt,
    ) -> None:
        self.path, self.model, self.tokenizer, self.long_audio, self.prompt = path, model, tokenizer, long_audio, prompt
        self.chat_template = self._chat_template()
        self.audio_token_id = int(model.config.audio_token_id)
        self.audio_token = tokenizer.convert_ids_to_tokens(self.audio_token_id)

    # --- loading ---------------------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str,
        dtype: str = "float32",
        device: str = "auto",
        attn_implementation: str | None = None,
        long_audio: LongAudio = "reject",
        prompt: Prompt = Prompt(),
        device_map: str | None = None,
    ) -> SpeechLM:
        """`from_pretrained` the model (eval mode, on `device`; "auto" = cuda if available) and its preprocessing.

        With a `device_map` ("auto", "balanced", "sequential", a device), `from_pretrained` places the layers itself,
        e.g. across several GPUs, and `device` is not used.
        """
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if long_audio not in LONG_AUDIO:
            raise ValueError(f"unknown long_audio {long_audio!r} (known: {', '.join(LONG_AUDIO)})")
        model = cls.model_class.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation=attn_implementation,
                                                device_map=device_map)
        if device_map is None:
            model = model.to(resolve_device(device))
        return cls(path, model.eval(), AutoTokenizer.from_pretrained(path), long_audio, prompt)

    def _chat_template(self) -> str | None:
        """The Jinja chat template prompts are rendered with: the processor's, else the tokenizer's. A family whose
        prompts are rendered by its tokenizer library instead (Voxtral: mistral-common) returns None."""
        template = ProcessorMixin.get_processor_dict(self.path)[0].get("chat_template") or self.tokenizer.chat_template
        if not template:
            raise ValueError(f"{self.family}: {self.path} has no chat template (neither processor nor tokenizer)")
        return template

    # --- family-specific audio geometry ------------------------------------------------------------------------------
    @property
    def window_samples(self) -> int | None:
        """Longest audio (16 kHz samples) the model takes in one window; None: no limit."""
        raise NotImplementedError

    @property
    def ms_per_position(self) -> float:
        """Milliseconds of audio per LLM audio position (1000 / positions per second); by default position k covers
        [k, k+1) * ms_per_position (see `position_times_ms`)."""
        raise NotImplementedError

    @property
    def time_resolution_ms(self) -> float:
        """Length of the audio interval one position stands for (`position_times_ms`): ms_per_position, unless a
        group of positions shares one interval (Granite's projector blocks)."""
        return self.ms_per_position

    def _audio(self, wave: np.ndarray) -> AudioInputs:
        """Audio kwargs for the model and position counts of a 16 kHz waveform (already length-checked); the kwargs are
        empty for a family whose `_speech_prompt` makes them with the prompt."""
        raise NotImplementedError

    @contextmanager
    def _condition(self, condition: Condition) -> Iterator[None]:
        """Model state for a condition (Granite switches its audio LoRA); nothing by default."""
        yield

    # --- structure and hooks -----------------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        """The LLM's decoder blocks (block l is `layers[l - 1]`)."""
        return self.model.model.language_model.layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (the first of several under a `device_map`)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def final_norm(self) -> nn.Module:
        """The LLM's norm after its last decoder block."""
        return self.model.model.language_model.norm

    @property
    def logits_scaling(self) -> float:
        """What the head's logits are divided by: Granite's `logits_scaling` (8 in the released checkpoints), which
        `GraniteForCausalLM` applies and transformers' `GraniteSpeechForConditionalGeneration.forward` does not; 1
        for every other family."""
        return float(getattr(self.model.config.get_text_config(), "logits_scaling", 1.0) or 1.0)

    @torch.no_grad()
    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """[..., V] float32 logits of residual-stream states `h` [..., d] taken at hook points (pre-norm): the model's
        own final norm and unembedding, divided by `logits_scaling`. At hook point L (the last block's output) this
        is the model's next-token logits; at earlier layers it is the logit lens."""
        h = h.to(device=self.device, dtype=self.model.dtype)
        return self.model.lm_head(self.final_norm(h)).float() / self.logits_scaling

    def hook_module(self, layer: int) -> nn.Module:
        """Where hidden state `layer` can be hooked.

        layer 0: decoder block 1, whose input (`args[0]` of a forward pre-hook) is the merged input embeddings
        [B, T, d], audio features included; the audio is scattered into the embeddings functionally inside the top
        model's forward, so no module outputs them. layer l >= 1: decoder block l, whose output is hidden state l
        (for l = L before the final norm, which `output_hidden_states` applies to the last state).
        """
        if not 0 <= layer <= self.n_layers:
            raise ValueError(f"layer {layer} out of range 0..{self.n_layers}")
        return self.layers[max(layer - 1, 0)]

    # --- inputs ------------------------------------------------------------------------------------------------------
    def position_times_ms(self, n_positions: int) -> np.ndarray:
        """[n, 2] start and end (ms from the first sample) of each audio position."""
        k = np.arange(n_positions, dtype=np.float64)[:, None]
        return np.concatenate([k, k + 1], axis=1) * self.ms_per_position

    def text_inputs(self, item: Item, style: Style) -> Inputs:
        """Condition T: the transcript `spoken_text(item, style)` as the user turn's question content."""
        transcript = spoken_text(item, style)
        text, ids, offsets = self._text_prompt(transcript, self.prompt.instruction_for(item, style))
        overlap = np.minimum(offsets[:, 1], len(transcript)) - np.maximum(offsets[:, 0], 0)
        span = np.flatnonzero(overlap > 0)
        words = positions_to_words(offsets[span], word_char_spans(transcript))
        return Inputs(item.id, "T", text, ids, torch.from_numpy(span), words)

    def _text_prompt(self, transcript: str, instruction: str | None) -> tuple[str, dict[str, torch.Tensor], np.ndarray]:
        """The T prompt: its text, input_ids and attention_mask [1, T], and each token's [start, end) character
        offsets relative to `transcript` [T, 2] (tokens outside it do not overlap [0, len(transcript)))."""
        prefix, suffix = self._split_render({"type": "text", "text": _SENTINEL}, _SENTINEL, instruction)
        text = prefix + transcript + suffix
        if text != self._render({"type": "text", "text": transcript}, instruction):
            raise ValueError(f"{self.family}: the chat template changes the user text; cannot locate the T span")
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].numpy() - len(prefix)
        return text, {k: enc[k] for k in ("input_ids", "attention_mask")}, offsets

    def speech_inputs(self, item: Item, wave: np.ndarray, style: Style,
                      word_spans_ms: np.ndarray | None = None) -> Inputs:
        """Condition S: the recording of `item` (16 kHz mono float, spoken in `style`) as the user turn's question
        content.

        Audio longer than `window_samples` is rejected (LongAudioError) or split into windows whose encoder outputs
        are concatenated, so the time mapping continues. With `word_spans_ms` [W, 2] the span positions get word
        indices. An empty recording, or one filling no audio position, is an AudioError naming the item.
        """
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise AudioError(f"item {item.id}: expected a non-empty 1-D waveform, got shape {wave.shape}")
        window = self.window_samples
        if window is not None and wave.size > window and self.long_audio == "reject":
            raise LongAudioError(
                f"item {item.id}: audio is {wave.size / SAMPLE_RATE:.2f} s, longer than the {self.family} window of "
                f"{window / SAMPLE_RATE:g} s (long_audio='reject'; use 'window' to split it)"
            )
        audio = self._audio(wave)
        if audio.n_content == 0:
            raise AudioError(f"item {item.id}: {wave.size} samples of audio fill no {self.family} audio position")
        text, model_inputs = self._speech_prompt(wave, audio, self.prompt.instruction_for(item, style))
        where = torch.nonzero(model_inputs["input_ids"][0] == self.audio_token_id)[:, 0]
        if len(where) != audio.n_placeholders or int(where[-1] - where[0]) + 1 != len(where):
            raise ValueError(f"{self.family}: {len(where)} audio placeholders after tokenization, expected "
                             f"{audio.n_placeholders} contiguous ones")
        span = where[: audio.n_content]
        words = None if word_spans_ms is None else positions_to_words(self.position_times_ms(len(span)), word_spans_ms)
        return Inputs(item.id, "S", text, model_inputs, span, words)

    def _speech_prompt(self, wave: np.ndarray, audio: AudioInputs, instruction: str | None
                       ) -> tuple[str, dict[str, torch.Tensor]]:
        """The S prompt with `audio.n_placeholders` audio placeholders: its text and model inputs (input_ids and
        attention_mask [1, T] plus the audio tensors)."""
        prefix, suffix = self._split_render(self._audio_part(), self.audio_token, instruction)
        text = prefix + self.audio_token * audio.n_placeholders + suffix
        enc = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        return text, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], **audio.tensors}

    def prompt_ids(self, style: Style) -> dict[Condition, list[int]]:
        """Token ids of the S and T prompts of a fixed multiple-choice probe item in `style` (S with one second of
        silence): the rendered system prompt, instruction and cue, through this model's own prompt path, for a
        fingerprint of what the model is asked."""
        speech = self.speech_inputs(_PROBE, np.zeros(SAMPLE_RATE, dtype=np.float32), style)
        return {c: x.model_inputs["input_ids"][0].tolist() for c, x in (("S", speech), ("T", self.text_inputs(_PROBE, style)))}

    def _audio_part(self) -> dict:
        if self.content_as_string:
            return {"type": "text", "text": self.audio_token}
        return {"type": "audio", "audio": _AUDIO_REF}

    def _render(self, question: dict, instruction: str | None) -> str:
        """The chat prompt with `question` as the user turn's content (plus `instruction`) and the answer cue."""
        parts = [question] + ([{"type": "text", "text": instruction}] if instruction else [])
        content = "".join(p["text"] for p in parts) if self.content_as_string else parts
        messages = [{"role": "system", "content": self.prompt.system}] if self.prompt.system is not None else []
        messages.append({"role": "user", "content": content})
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        return text + self.prompt.cue

    def _split_render(self, question: dict, marker: str, instruction: str | None) -> tuple[str, str]:
        """The rendered prompt before and after `marker`, which must occur exactly once."""
        text = self._render(question, instruction)
        if text.count(marker) != 1:
            raise ValueError(f"{self.family}: the chat template renders {text.count(marker)} copies of {marker!r}, "
                             "expected exactly one")
        prefix, suffix = text.split(marker)
        return prefix, suffix

    def _windows(self, wave: np.ndarray) -> list[np.ndarray]:
        """`wave` cut into consecutive windows of `window_samples` (the last one shorter)."""
        step = self.window_samples or wave.size
        return [wave[i : i + step] for i in range(0, wave.size, step)]

    # --- forward -----------------------------------------------------------------------------------------------------
    def _model_inputs(self, inputs: Inputs) -> dict[str, torch.Tensor]:
        """`inputs.model_inputs` on the model's device, floating tensors (audio features) in its dtype."""
        return self._to_device(inputs.model_inputs)

    def _to_device(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`tensors` on the model's device, floating ones (audio features) in its dtype."""
        cast = {"device": self.device, "dtype": self.model.dtype}
        return {k: v.to(**cast) if v.is_floating_point() else v.to(self.device) for k, v in tensors.items()}

    @torch.no_grad()
    def prefill(self, inputs: Inputs, hidden: bool = False) -> Prefill:
        """One forward of the prompt with a KV cache; with `hidden`, also the span hidden states [L+1, n, d]."""
        return self.prefill_batch([inputs], hidden)[0]

    @torch.no_grad()
    def prefill_batch(self, inputs: list[Inputs], hidden: bool = False) -> list[Prefill]:
        """`prefill` of several prompts of one condition in one left-padded forward; equal to one `prefill` each.

        The B prompts are left-padded to the longest (attention mask 0, positions counted from each prompt's first
        token) and, for S, their audio tensors concatenated along dim 0 (audio windows; see `batch_audio`). Each
        item gets its own KV cache, cut from the batched one without its padding, so `option_logliks` runs as after
        an unbatched prefill. Families whose S audio cannot be batched run S prompts one by one.
        """
        conditions = {x.condition for x in inputs}
        if len(conditions) != 1:
            raise ValueError(f"prefill_batch needs prompts of one condition, got {sorted(conditions)}")
        if len(inputs) > 1 and conditions == {"S"} and not self.batch_audio:
            return [self.prefill_batch([x], hidden)[0] for x in inputs]
        kwargs, pads = self._batch(inputs)
        with self._condition(inputs[0].condition):
            out = self._last_logits(kwargs, hidden)
        logprobs = self._logprobs(out.logits[:, -1])  # [B, V]
        results = []
        for r, (x, pad) in enumerate(zip(inputs, pads)):
            states = None
            if hidden:
                span = (x.span + pad).to(self.device)
                states = torch.stack([h[r, span] for h in out.hidden_states])
            cache = out.cache if len(inputs) == 1 else self._item_cache(out.cache, r, pad)
            results.append(Prefill(x, logprobs[r], cache, states))
        return results

    def _last_logits(self, kwargs: dict[str, torch.Tensor], hidden: bool) -> CausalLMOutputWithPast:
        """The model's forward of `kwargs` with a KV cache (and every hidden state with `hidden`), its logits [B, 1, V]
        at the last position only, as `logits_to_keep=1` gives them: the multimodal base model, then the head on its
        last final state. Qwen2-Audio's and the Qwen2.5-Omni thinker's forwards take no `logits_to_keep` and would
        project every position ([B, T, V] floats: gigabytes for a 7B vocabulary and long audio). Logits and hidden
        states come back on `device`, as the top model's forward returns them under a `device_map`."""
        base = self.model.model(**kwargs, use_cache=True, output_hidden_states=hidden)
        logits = self.model.lm_head(base.last_hidden_state[:, -1:]).to(self.device)
        states = tuple(h.to(self.device) for h in base.hidden_states) if hidden else None
        return CausalLMOutputWithPast(logits=logits, cache=base.cache, hidden_states=states)

    def _batch(self, inputs: list[Inputs]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Left-padded model kwargs of `inputs` on the model's device (input_ids, attention_mask, position_ids [B, T]
        and the concatenated audio tensors) and each prompt's padding length."""
        lengths = [x.model_inputs["input_ids"].shape[1] for x in inputs]
        width = max(lengths)
        ids = torch.full((len(inputs), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for r, (x, n) in enumerate(zip(inputs, lengths)):
            ids[r, width - n :], mask[r, width - n :] = x.model_inputs["input_ids"][0], 1
        tensors = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        for key in inputs[0].model_inputs.keys() - {"input_ids", "attention_mask"}:
            tensors[key] = torch.cat([x.model_inputs[key] for x in inputs])
        return self._to_device(tensors), [width - n for n in lengths]

    @staticmethod
    def _item_cache(cache: DynamicCache, row: int, pad: int) -> DynamicCache:
        """Row `row` of a batched KV cache without its `pad` left-padding positions (as its own prefill's cache).

        Every layer holds keys and values [B, heads, T, head_dim]: full attention, as in every supported family."""
        return DynamicCache([(k[row : row + 1, :, pad:], v[row : row + 1, :, pad:]) for k, v, *_ in cache])

    def hidden_states(self, inputs: Inputs) -> torch.Tensor:
        """[L+1, n, d] hidden states over the span (layer 0 = input embeddings), in the model's dtype and device."""
        return self.prefill(inputs, hidden=True).hidden

    @torch.no_grad()
    def option_logliks(self, prefills: list[Prefill], options: list[list[list[int]]]) -> list[np.ndarray]:
        """Per prefill (one condition), [K] summed log-likelihood of each of its options' token ids after its prompt.

        The first tokens are read off the prefills; the rest come from one forward of every item's options together:
        each option row continues a copy of its prompt's KV cache, the caches left-padded to the longest prompt
        (attention mask 0 there), the options right-padded, positions continuing after each prompt.
        """
        if any(len(o) == 0 for opts in options for o in opts):
            raise ValueError("an option has no tokens")
        first = [p.logprobs[[o[0] for o in opts]].double().cpu().numpy() for p, opts in zip(prefills, options)]
        owner = [i for i, opts in enumerate(options) for _ in opts]  # the prefill of each option row
        flat = [o for opts in options for o in opts]
        width = max(len(o) for o in flat) - 1
        if width == 0:
            return first
        lengths = torch.tensor([p.length for p in prefills])
        k, p = len(flat), int(lengths.max())
        ids = torch.zeros((k, width), dtype=torch.long)
        target = torch.zeros((k, width), dtype=torch.long)
        mask = torch.zeros((k, p + width), dtype=torch.long)
        for r, (o, i) in enumerate(zip(flat, owner)):
            n = len(o) - 1
            ids[r, :n], target[r, :n] = torch.tensor(o[:-1]), torch.tensor(o[1:])
            mask[r, p - int(lengths[i]) : p + n] = 1
        valid = mask[:, p:].bool()
        cache = self._options_cache(prefills, [len(opts) for opts in options], p)
        with self._condition(prefills[0].inputs.condition):
            logits = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                position_ids=(lengths[owner, None] + torch.arange(width)).to(self.device),
                cache=cache, use_cache=True,
            ).logits
        logp = self._logprobs(logits).gather(-1, target.to(self.device)[..., None])[..., 0]
        rest = (logp * valid.to(self.device)).sum(-1).double().cpu().numpy()
        return [f + rest[np.array(owner) == i] for i, f in enumerate(first)]

    @staticmethod
    def _options_cache(prefills: list[Prefill], counts: list[int], width: int) -> DynamicCache:
        """A new KV cache for option rows: prefill i's keys and values [1, heads, T_i, head_dim] repeated counts[i]
        times along the batch and left-padded with zeros to `width` positions, the prefills' in order."""
        def rows(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([nn.functional.pad(t, (0, 0, width - t.shape[2], 0)).repeat_interleave(n, 0)
                              for t, n in zip(tensors, counts)])
        layers = zip(*[list(p.cache) for p in prefills])  # per layer: each prefill's (keys, values, ...)
        return DynamicCache([(rows([kv[0] for kv in layer]), rows([kv[1] for kv in layer])) for layer in layers])

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V] float32 log-probs of the head's logits [..., V] as `model(...).logits` returns them, divided by
        `logits_scaling` first (Granite's forward leaves that division out)."""
        return torch.log_softmax(logits.float() / self.logits_scaling, -1)

    def score(self, inputs: Inputs, item: Item, style: Style, norm: Norm = "none") -> Scores:
        """Option log-likelihoods of `item` after the prompt (one prefill, then all options batched)."""
        return self.score_prefill(self.prefill(inputs), item, style, norm)

    def score_prefill(self, prefill: Prefill, item: Item, style: Style, norm: Norm = "none") -> Scores:
        """`score` on an existing prefill (e.g. one run with hidden states or under an intervention hook)."""
        return self.score_prefills([prefill], [item], style, norm)[0]

    def score_prefills(self, prefills: list[Prefill], items: list[Item], style: Style, norm: Norm = "none"
                       ) -> list[Scores]:
        """`score_prefill` of each item on its prefill (one condition): every option tokenized in one call and scored
        in one forward (`option_logliks`)."""
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r} (known: {', '.join(NORMS)})")
        if not items:
            return []
        texts = [option_texts(it, style) for it in items]
        flat = self.tokenizer([t for ts in texts for t in ts], add_special_tokens=False)["input_ids"]
        ends = np.cumsum([len(ts) for ts in texts])
        ids = [flat[e - len(ts) : e] for ts, e in zip(texts, ends)]
        logliks = self.option_logliks(prefills, ids)
        return [Scores(l, np.array([len(i) for i in o]), np.array([len(t) for t in ts]), norm)
                for l, o, ts in zip(logliks, ids, texts)]

    @torch.no_grad()
    def generate(self, inputs: Inputs, *, greedy: bool, max_new_tokens: int, repetition_penalty: float) -> str:
        """The continuation of the prompt (greedy, or sampled with the model's generation config), decoded without
        special tokens; the arguments are the config's `states.decoding`.

        Runs on the logits of `model.generate`, which for Granite are not divided by `logits_scaling`: greedy argmax
        and the (multiplicative) repetition penalty pick the same tokens either way, sampling would not.
        """
        with self._condition(inputs.condition):
            out = self._generate_ids(self._model_inputs(inputs), do_sample=not greedy, max_new_tokens=max_new_tokens,
                                     repetition_penalty=repetition_penalty)
        return self.tokenizer.decode(out[0, inputs.model_inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def _generate_ids(self, model_inputs: dict[str, torch.Tensor], **decoding: Any) -> torch.Tensor:
        """[1, T + new] token ids of the model's own `generate` under `decoding` (generate's keywords)."""
        return self.model.generate(**model_inputs, **decoding)


# --- pure helpers ---------------------------------------------------------------------------------------------------
def option_texts(item: Item, style: Style) -> list[str]:
    """What each option continues the prompt with: its letter (`letter`) or the choice text (`cloze`)."""
    if style == "letter":
        return list(LETTERS[: len(item.choices)])
    if style == "cloze":
        return [c.strip() for c in item.choices]
    raise ValueError(f"unknown item style {style!r} (expected 'letter' or 'cloze')")


def normalized(logliks: np.ndarray, n_tokens: np.ndarray, n_chars: np.ndarray, norm: Norm) -> np.ndarray:
    """Option scores under `norm`: summed log-likelihood, or divided by tokens or characters."""
    return {"none": logliks, "tokens": logliks / n_tokens, "chars": logliks / n_chars}[norm]


def positions_to_words(times: np.ndarray, word_spans: np.ndarray) -> np.ndarray:
    """[n] word index of each interval `times` [n, 2] among `word_spans` [W, 2] (same unit), -1 outside any word.

    An interval belongs to the word it overlaps most, if that overlap is at least half its length (ties: earlier word).
    """
    times = np.asarray(times, dtype=np.float64).reshape(-1, 2)
    spans = np.asarray(word_spans, dtype=np.float64).reshape(-1, 2)
    if len(spans) == 0:
        return np.full(len(times), -1)
    overlap = np.minimum(times[:, None, 1], spans[None, :, 1]) - np.maximum(times[:, None, 0], spans[None, :, 0])
    best = overlap.argmax(1)
    most = overlap[np.arange(len(times)), best]
    return np.where((most > 0) & (2 * most >= times[:, 1] - times[:, 0]), best, -1)


def word_char_spans(text: str) -> np.ndarray:
    """[W, 2] character span of each word of `words_of(text)`."""
    spans, pos = [], 0
    for w in words_of(text):
        start = text.index(w, pos)
        spans.append((start, start + len(w)))
        pos = start + len(w)
    return np.array(spans, dtype=np.int64).reshape(-1, 2)


# Ordered answer templates in the spirit of VoiceBench's MCQ extractor: the first that matches wins. Cue words match in
# any case; a bare letter must be upper case (so the article "a" is not read as option A), except as the whole answer.
_LETTER_TEMPLATES = (
    r"(?i:answer\s*(?:is|:))\s*(?i:option\s*)?[(*\"'\s]*({L})\b",
    r"\(({L})\)",
    r"^\W*({L}|{l})\W*$",
    r"^({L})[.,:)]",
    r"\b(?i:option|choice|choose|select|pick)\s+[(*\"']*({L})\b",
    r"\b(?i:think|believe|guess|say)\s+(?i:it'?s\s+|it is\s+)?[(*\"']*({L})\b",
    r"\b({L})\s+is\s+(?i:the\s+)?(?i:correct|right|best)\b",
)


def extract_letter(response: str, n_choices: int) -> int:
    """Choice index named by a letter in a generated answer, or -1 (unparsed)."""
    letters = LETTERS[:n_choices]
    for template in _LETTER_TEMPLATES:
        m = re.search(template.format(L=f"[{letters}]", l=f"[{letters.lower()}]"), response.strip())
        if m:
            return letters.index(m.group(1).upper())
    return -1


def extract_choice(response: str, choices: list[str]) -> int:
    """Choice whose text occurs first (whole words, any case; the longer one at equal starts), or -1 (unparsed)."""
    found = []
    for k, c in enumerate(choices):
        m = re.search(rf"(?<!\w){re.escape(c.strip())}(?!\w)", response, flags=re.IGNORECASE)
        if m:
            found.append((m.start(), -len(c.strip()), k))
    return min(found)[2] if found else -1


def extract_answer(response: str, item: Item, style: Style) -> int:
    """Deterministic answer extraction from generated text: a letter (`letter`) or a choice text (`cloze`); -1 if
    nothing matches (recorded as unparsed, never guessed)."""
    if style == "letter":
        return extract_letter(response, len(item.choices))
    return extract_choice(response, item.choices)

