"""Backends compute the Global Pointer projections and score spans; decoding is shared.

Every backend implements :class:`Backend`: given a padded :class:`~hugie.tokenization.PairBatch`
it returns the spans above a logit threshold as (batch, start, end) token rows and their logits.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..tokenization import PairBatch


class Backend(Protocol):
    name: str
    device: str

    def score(self, batch: PairBatch, threshold: float, max_width: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 [N, 3] rows of (batch, start, end), float32 [N] logits) above ``threshold``."""
        ...

    def describe(self) -> dict:
        """Backend, device/provider and versions for ``hugie info`` and ``GET /info``."""
        ...


BACKENDS = ("torch", "onnx")
