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
    def project(self, batch: PairBatch):
        """q, k, start and end bias as NumPy arrays (a slot model's per slot: q [B, K, L, D], biases [B, K, L])."""
        inputs = [batch.input_ids, batch.attention_mask]
        if self.model.config.slotted:
            inputs += [batch.slot_positions, batch.slot_mask]
        tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in inputs]
        return [t.float().cpu().numpy() for t in self.model.project(*tensors)]

    def score(self, batch: PairBatch, threshold: float, max_width: int):
        if batch.input_ids.size == 0:
            return np.zeros((0, 4), np.int64), np.zeros((0,), np.float32)
        q, k, sb, eb = self.project(batch)
        return span_scores_banded(q, k, sb, eb, batch.span_mask, threshold, max_width)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "torch": torch.__version__,
                "threads": torch.get_num_threads()}
