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


def _word_boundaries(text: str, start: int = 0, end: int | None = None) -> set[int]:
    """Character positions of ``text[start:end]`` that are word boundaries (jieba for CJK, whitespace
    otherwise), as positions in ``text``."""
    part = text[start:end]
    bounds = {start + i for i, ch in enumerate(part) if ch.isspace()}
    bounds |= {start + i + 1 for i, ch in enumerate(part) if ch.isspace()}
    if any(is_cjk(ch) for ch in part):
        bounds |= {start + i for i in _jieba_boundaries(part)}
    return bounds


def warm_up() -> None:
    """Load jieba's dictionary now (half a second, once per process) rather than in the first long request."""
    _jieba_boundaries("预热分词词典")


@lru_cache(maxsize=64)
def _jieba_boundaries(text: str) -> frozenset[int]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return frozenset(end for _, _, end in jieba.tokenize(text))


def _best_cut(text: str, tokens: TextTokens, candidates: range) -> int:
    """The candidate token to cut before: the best boundary (sentence, clause, word, anywhere), the first in
    ``candidates`` order among equals. Word boundaries are segmented only when no sentence or clause end is
    there, and only around the candidates (jieba holds the interpreter: a whole long text took 50 ms)."""
    words: set[int] = set()
    for attempt in range(2):
        cut, best = candidates[0], -1
        for cand in candidates:
            score = _cut_score(text, tokens.starts[cand], words)
            if score > best:
                cut, best = cand, score
            if best == 3:
                break
        if best >= 2 or attempt:
            return cut
        positions = [tokens.starts[c] for c in candidates]
        words = _word_boundaries(text, max(0, min(positions) - 8), max(positions) + 8)
    return cut


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
    windows = []
    lo = 0
    while True:
        if n - lo <= budget:
            windows.append((lo, n))
            return windows
        # best cut in the last half of the window: highest score, latest position
        hi = _best_cut(text, tokens, range(lo + budget, lo + budget // 2, -1))
        windows.append((lo, hi))
        # next window starts `overlap` tokens back, at the best boundary there
        nxt = _best_cut(text, tokens, range(hi - overlap, hi))
        lo = max(nxt, lo + 1)
