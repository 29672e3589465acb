"""PyTorch backend: the model computes q, k and biases; the shared NumPy scorer finds spans."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import HugieError
from ..scoring import span_scores_banded
from ..tokenization import PairBatch
from . import parse_device


def resolve_device(device: str) -> str:
    """The torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (E014 when it is not there)."""
    kind, index = parse_device(device)
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HugieError("E014", device=device, reason="torch sees no CUDA device")
        if index is not None and index >= torch.cuda.device_count():
            raise HugieError("E014", device=device, reason=f"torch sees {torch.cuda.device_count()} CUDA device(s)")
        return "cuda" if index is None else f"cuda:{index}"
    return "cpu"


class TorchBackend:
    name = "torch"

    def __init__(self, model, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def project(self, batch: PairBatch, keep_states: bool = False):
        """q, k, start and end bias as NumPy arrays (a slot model's per slot: q [B, K, L, D], biases [B, K, L]);
        ``keep_states``: the rows' states after the model's ``reuse_layers`` layers come fifth."""
        inputs = [batch.input_ids, batch.attention_mask]
        if self.model.config.slotted:
            inputs += [batch.slot_positions, batch.slot_mask]
        if batch.reused_states is not None:
            inputs += [batch.reused_states, batch.text_mask]
            if batch.subject_mask is not None:
                inputs.append(batch.subject_mask)
        tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in inputs]
        return [t.float().cpu().numpy() for t in self.model.project(*tensors, with_states=keep_states)]

    def score(self, batch: PairBatch, threshold: float, max_width: int, keep_states: bool = False):
        """Spans above ``threshold`` (a logit) as (spans [N, 4], logits); ``keep_states``: and the rows' states
        after the model's ``reuse_layers`` layers [B, L, H]."""
        if batch.input_ids.size == 0:
            empty = np.zeros((0, 4), np.int64), np.zeros((0,), np.float32)
            return (*empty, np.zeros((0, 0, 0), np.float32)) if keep_states else empty
        q, k, sb, eb, *states = self.project(batch, keep_states)
        found = span_scores_banded(q, k, sb, eb, batch.span_mask, threshold, max_width)
        return (*found, states[0]) if keep_states else found

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "torch": torch.__version__,
                "threads": torch.get_num_threads()}
