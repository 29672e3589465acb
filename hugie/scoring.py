"""Span scoring shared by every backend.

A backend produces, per token, the Global Pointer projections *before* rotary position
encoding. One encoder row carries K prompts (slots): ``q`` is slot-specific, [B, K, L, D], and
``k`` is shared by the slots of a row, [B, L, D]; ``start_bias`` / ``end_bias`` are [B, K, L] and
the span mask is [B, L]. The span logit of slot ``s`` for tokens ``i <= j`` is::

    s_s(i, j) = <rope(q[b, s])_i, rope(k[b])_j> / sqrt(D) + start_bias[b, s, i] + end_bias[b, s, j]

and a span exists when ``mask[b, i] and mask[b, j] and 0 <= j - i < W and s_s(i, j) > threshold``.
Spans are rows (batch, slot, start, end inclusive) ordered by (batch, slot, start, end). One-slot
inputs (q [B, L, D], biases [B, L]) are read as K = 1 (slot column 0).
RoPE rotates dimension pairs (2m, 2m+1) of the vector at absolute token position p by
``p * 10000 ** (-2m / D)``. This module holds the NumPy reference that the torch model, the
fused ``SpanScore`` op and its fallback graph are all tested against.
"""

from __future__ import annotations

import numpy as np

ROPE_BASE = 10000.0


def rope_tables(length: int, dim: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables of shape [length, dim], each angle repeated for its pair."""
    inv_freq = ROPE_BASE ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.repeat(np.cos(angles), 2, axis=-1).astype(dtype)
    sin = np.repeat(np.sin(angles), 2, axis=-1).astype(dtype)
    return cos, sin


def apply_rope(x: np.ndarray) -> np.ndarray:
    """Rotate [..., L, D] by token position (pairs (2m, 2m+1))."""
    length, dim = x.shape[-2], x.shape[-1]
    cos, sin = rope_tables(length, dim, x.dtype)
    rotated = np.empty_like(x)
    rotated[..., 0::2] = -x[..., 1::2]
    rotated[..., 1::2] = x[..., 0::2]
    return x * cos + rotated * sin


def _slot_inputs(q, k, start_bias, end_bias, mask):
    """float32 q [B, K, L, D], k [B, L, D], biases [B, K, L] and bool mask [B, L]; one-slot inputs get K = 1."""
    q = np.asarray(q, dtype=np.float32)
    k = np.asarray(k, dtype=np.float32)
    start_bias = np.asarray(start_bias, dtype=np.float32)
    end_bias = np.asarray(end_bias, dtype=np.float32)
    if q.ndim == 3:  # one slot: q [B, L, D], biases [B, L]
        q = q[:, None]
        start_bias = start_bias[:, None] if start_bias.ndim == 2 else start_bias
        end_bias = end_bias[:, None] if end_bias.ndim == 2 else end_bias
    if q.ndim != 4:
        raise ValueError(f"q must have shape [B, K, L, D] (or [B, L, D] for one slot), got {q.shape}")
    batch, slots, length, dim = q.shape
    if k.shape != (batch, length, dim):
        raise ValueError(f"k must have shape [B, L, D] = {(batch, length, dim)}, got {k.shape}")
    for name, bias in (("start_bias", start_bias), ("end_bias", end_bias)):
        if bias.shape != (batch, slots, length):
            raise ValueError(f"{name} must have shape [B, K, L] = {(batch, slots, length)}, got {bias.shape}")
    valid = np.asarray(mask).astype(bool)
    if valid.shape != (batch, length):
        raise ValueError(f"span mask must have shape [B, L] = {(batch, length)}, got {valid.shape}")
    return q, k, start_bias, end_bias, valid


def _no_spans() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.int64), np.zeros((0,), np.float32)


def span_scores_reference(
    q: np.ndarray,
    k: np.ndarray,
    start_bias: np.ndarray,
    end_bias: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    max_width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Spans above ``threshold`` as (int64 [N, 4] of (batch, slot, start, end), float32 [N] logits).

    Rows are ordered by batch, slot, start, then end (end inclusive, token indices). Dense over
    [B, K, L, L]: the plain definition the banded paths are checked against.
    """
    q, k, start_bias, end_bias, valid = _slot_inputs(q, k, start_bias, end_bias, mask)
    batch, slots, length, dim = q.shape
    if batch == 0 or slots == 0 or length == 0:
        return _no_spans()
    qr, kr = apply_rope(q), apply_rope(k)  # k rotated once per row, shared by its slots
    logits = np.einsum("bsid,bjd->bsij", qr, kr) / np.sqrt(dim)
    logits = logits + start_bias[..., :, None] + end_bias[..., None, :]
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # j - i
    band = (offset >= 0) & (offset < max_width)
    keep = valid[:, None, :, None] & valid[:, None, None, :] & band & (logits > threshold)
    b, s, i, j = np.nonzero(keep)
    spans = np.stack([b, s, i, j], axis=1).astype(np.int64)
    return spans, logits[b, s, i, j].astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def logit(p: float) -> float:
    """Inverse sigmoid, for turning a probability threshold into a logit threshold."""
    p = min(max(float(p), 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def span_scores_banded(
    q: np.ndarray,
    k: np.ndarray,
    start_bias: np.ndarray,
    end_bias: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    max_width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Same result as :func:`span_scores_reference`, computing only the [B, K, L, W] band."""
    q, k, start_bias, end_bias, valid = _slot_inputs(q, k, start_bias, end_bias, mask)
    batch, slots, length, dim = q.shape
    if batch == 0 or slots == 0 or length == 0 or max_width <= 0:
        return _no_spans()
    width = min(int(max_width), length)
    qr, kr = apply_rope(q), apply_rope(k)
    k_pad = np.concatenate([kr, np.zeros((batch, width, dim), np.float32)], axis=1)
    eb_pad = np.concatenate([end_bias, np.zeros((batch, slots, width), np.float32)], axis=2)
    v_pad = np.concatenate([valid, np.zeros((batch, width), bool)], axis=1)
    scores = np.empty((batch, slots, length, width), np.float32)
    keep = np.empty((batch, slots, length, width), bool)
    scale = 1.0 / np.sqrt(dim)
    for off in range(width):
        scores[..., off] = (np.einsum("bsld,bld->bsl", qr, k_pad[:, off : off + length]) * scale
                            + start_bias + eb_pad[..., off : off + length])
        keep[..., off] = (valid & v_pad[:, off : off + length])[:, None]
    keep &= scores > threshold
    b, s, i, off = np.nonzero(keep)
    spans = np.stack([b, s, i, i + off], axis=1).astype(np.int64)
    return spans, scores[b, s, i, off].astype(np.float32)
