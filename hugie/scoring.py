"""Span scoring shared by every backend.

A backend produces, per token, the Global Pointer projections *before* rotary position
encoding: ``q`` and ``k`` of shape [B, L, D] and ``start_bias`` / ``end_bias`` of shape [B, L].
The span logit for tokens ``i <= j`` is::

    s(i, j) = <rope(q)_i, rope(k)_j> / sqrt(D) + start_bias[i] + end_bias[j]

and a span exists when ``mask[i] and mask[j] and 0 <= j - i < W and s(i, j) > threshold``.
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


def span_scores_reference(
    q: np.ndarray,
    k: np.ndarray,
    start_bias: np.ndarray,
    end_bias: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    max_width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Spans above ``threshold`` as (int64 [N, 3] of (batch, start, end), float32 [N] logits).

    Rows are ordered by batch, then start, then end (end inclusive, token indices).
    """
    q = np.asarray(q, dtype=np.float32)
    k = np.asarray(k, dtype=np.float32)
    batch, length, dim = q.shape
    if batch == 0 or length == 0:
        return np.zeros((0, 3), np.int64), np.zeros((0,), np.float32)
    qr, kr = apply_rope(q), apply_rope(k)
    logits = np.einsum("bid,bjd->bij", qr, kr) / np.sqrt(dim)
    logits = logits + start_bias[:, :, None] + end_bias[:, None, :]
    valid = mask.astype(bool)
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # j - i
    band = (offset >= 0) & (offset < max_width)
    keep = valid[:, :, None] & valid[:, None, :] & band[None] & (logits > threshold)
    b, i, j = np.nonzero(keep)
    spans = np.stack([b, i, j], axis=1).astype(np.int64)
    return spans, logits[b, i, j].astype(np.float32)


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
    """Same result as :func:`span_scores_reference`, computing only the [B, L, W] band."""
    q = np.asarray(q, dtype=np.float32)
    k = np.asarray(k, dtype=np.float32)
    batch, length, dim = q.shape
    if batch == 0 or length == 0:
        return np.zeros((0, 3), np.int64), np.zeros((0,), np.float32)
    width = max(1, min(int(max_width), length))
    qr, kr = apply_rope(q), apply_rope(k)
    valid = np.asarray(mask).astype(bool)
    k_pad = np.concatenate([kr, np.zeros((batch, width, dim), np.float32)], axis=1)
    eb_pad = np.concatenate([end_bias, np.zeros((batch, width), np.float32)], axis=1)
    v_pad = np.concatenate([valid, np.zeros((batch, width), bool)], axis=1)
    scores = np.empty((batch, length, width), np.float32)
    keep = np.empty((batch, length, width), bool)
    scale = 1.0 / np.sqrt(dim)
    for off in range(width):
        scores[:, :, off] = (np.einsum("bld,bld->bl", qr, k_pad[:, off : off + length]) * scale
                             + start_bias + eb_pad[:, off : off + length])
        keep[:, :, off] = valid & v_pad[:, off : off + length]
    keep &= scores > threshold
    b, i, off = np.nonzero(keep)
    spans = np.stack([b, i, i + off], axis=1).astype(np.int64)
    return spans, scores[b, i, off].astype(np.float32)
