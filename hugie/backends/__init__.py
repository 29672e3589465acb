"""Backends compute the Global Pointer projections and score spans; decoding is shared.

Every backend implements :class:`Backend`: given a padded :class:`~hugie.tokenization.PairBatch`
it returns the spans above a logit threshold as (batch, slot, start, end) token rows and their logits
(slot 0 for a one-slot model; a slot model's batch says where each prompt slot's marker is).
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

from ..errors import HugieError
from ..tokenization import PairBatch


class Backend(Protocol):
    name: str
    device: str

    def score(self, batch: PairBatch, threshold: float, max_width: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 [N, 4] rows of (batch, slot, start, end), float32 [N] logits) above ``threshold``."""
        ...

    def describe(self) -> dict:
        """Backend, device/provider and versions for ``hugie info`` and ``GET /info``."""
        ...


BACKENDS = ("torch", "onnx")

_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def parse_device(device: str) -> tuple[str, int | None]:
    """``("auto" | "cpu" | "cuda", CUDA device index or None)`` of ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (else E014)."""
    match = _DEVICE.fullmatch(device.strip().lower()) if isinstance(device, str) else None
    if match is None:
        raise HugieError("E014", device=device, reason="use auto, cpu, cuda or cuda:N")
    kind = match.group(0).split(":")[0]
    return kind, int(match.group(1)) if match.group(1) is not None else None
