"""Long-text windows: token ranges of at most ``budget`` tokens, cut at sentence or word
boundaries, overlapping so that an entity cut by one window is whole in the next.

Windows are ranges over the text's own tokens, so every window keeps the character offsets of
the caller's text and spans need no re-basing.
"""

from __future__ import annotations

from functools import lru_cache

from .tokenization import TextTokens, is_cjk

SENTENCE_END = set("。！？!?；;…\n\r")
CLAUSE_END = set("，,、：:")


def _word_boundaries(text: str) -> set[int]:
    """Character positions that are word boundaries (jieba for CJK, whitespace otherwise)."""
    bounds = {i for i, ch in enumerate(text) if ch.isspace()} | {i + 1 for i, ch in enumerate(text) if ch.isspace()}
    if any(is_cjk(ch) for ch in text):
        bounds |= _jieba_boundaries(text)
    return bounds


@lru_cache(maxsize=64)
def _jieba_boundaries(text: str) -> frozenset[int]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return frozenset(end for _, _, end in jieba.tokenize(text))


def _cut_score(text: str, pos: int, words: set[int]) -> int:
    """How good a cut before character ``pos`` is: 3 sentence, 2 clause, 1 word, 0 anywhere."""
    prev = text[pos - 1] if pos > 0 else ""
    if prev in SENTENCE_END:
        return 3
    if prev in CLAUSE_END:
        return 2
    if pos in words:
        return 1
    return 0


def plan_windows(text: str, tokens: TextTokens, budget: int, overlap: int | None = None) -> list[tuple[int, int]]:
    """Token ranges [lo, hi) covering all tokens, each at most ``budget`` long."""
    n = len(tokens)
    if budget < 1:
        raise ValueError("window budget must be >= 1 token")
    if n <= budget:
        return [(0, n)]
    if overlap is None:
        overlap = max(1, budget // 4)
    overlap = min(overlap, budget // 2)
    words = _word_boundaries(text)
    windows = []
    lo = 0
    while True:
        if n - lo <= budget:
            windows.append((lo, n))
            return windows
        # best cut in the last half of the window: highest score, latest position
        hi, best = lo + budget, -1
        for cand in range(lo + budget, lo + budget // 2, -1):
            score = _cut_score(text, tokens.starts[cand], words)
            if score > best:
                hi, best = cand, score
            if best == 3:
                break
        windows.append((lo, hi))
        # next window starts `overlap` tokens back, at the best boundary there
        nxt, best = hi - overlap, -1
        for cand in range(hi - overlap, hi):
            score = _cut_score(text, tokens.starts[cand], words)
            if score > best:
                nxt, best = cand, score
            if best == 3:
                break
        lo = max(nxt, lo + 1)
