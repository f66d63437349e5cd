"""Decision-position states (P2 Fig. 7): the hook-point state of every layer at the decision position, the prompt's
last, stored whole so that probes (`modgap.metrics.probes`) can be fitted from the store without the model.

Layer l is hook point l (0 = input embeddings, L = the last block's output before the final norm). The field is
[L+1, d] float32 per item and condition (the store writes every readout field as float32): 4 (L+1) d bytes, 0.54 MB
per item and condition for Qwen2-Audio-7B (L = 32, d = 4096). Its control is the probes' shuffled-label task.
"""
from __future__ import annotations

import numpy as np

from modgap.models.base import SpeechLM
from modgap.states.readouts import Readout, Seen, register


@register
class DecisionStates(Readout):
    name = "decision"
    needs = ("decision_states",)

    def fields(self, adapter: SpeechLM) -> dict[str, tuple[int, ...]]:
        return {"decision_state": (adapter.n_layers + 1, adapter.hidden_size)}

    def __call__(self, seen: Seen) -> dict[str, np.ndarray]:
        return {"decision_state": seen.decision.float().cpu().numpy()}
