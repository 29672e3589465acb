"""Prompts of slot models: several prompts, each behind a marker token, before the text of one row.

An entity schema is ``[E] 人名 [E] 公司 …``; the predicates of one subject are
``【雅典娜女神】 [R] 导演 [R] 主演 …``; a free-form instruction is one ``[E]`` slot. Markers are
vocabulary pieces no text can produce, so a prompt's words never turn into a marker. Training and
inference build prompts here, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .tokenization import HugieTokenizer, TextTokens

ENTITY, RELATION = "entity", "relation"
MARKER_KINDS = (ENTITY, RELATION)

#: how the subject of a row of predicates is written before its slots, per language
SUBJECT_CUES = {"zh": "【{subject}】", "en": "[{subject}]"}


def subject_cue(subject: str, language: str) -> str:
    return SUBJECT_CUES.get(language, SUBJECT_CUES["en"]).format(subject=subject)


@dataclass(frozen=True)
class Prompt:
    """One row's prompt: an optional ``prefix`` (a relation's subject cue) and its slots' words."""

    kind: str  # ENTITY or RELATION: which marker goes before each slot
    slots: tuple[str, ...]
    prefix: str = ""


class PromptTokenizer:
    """Tokens of prompts for a slot model (its ``config.slots`` markers), with each slot's marker index."""

    def __init__(self, tokenizer: HugieTokenizer, slots: dict):
        self.tokenizer = tokenizer
        self.marker_ids = {kind: tokenizer.marker_id(slots["markers"][kind]) for kind in MARKER_KINDS}
        self.max_slots = int(slots["max_slots"])
        self.max_prompt_tokens = int(slots["max_prompt_tokens"])

    def words(self, texts: Sequence[str]) -> dict[str, TextTokens]:
        unique = list(dict.fromkeys(texts))
        return dict(zip(unique, self.tokenizer.tokenize(unique)))

    def slot_length(self, tokens: TextTokens) -> int:
        """Tokens a slot adds to a prompt: its marker and its words."""
        return 1 + len(tokens)

    def encode(self, prompt: Prompt, words: dict[str, TextTokens] | None = None) -> tuple[TextTokens, list[int]]:
        """The prompt's tokens (offsets unused: prompts are never decoded) and each slot's marker index."""
        words = words if words is not None else self.words([prompt.prefix, *prompt.slots])
        ids: list[int] = list(words[prompt.prefix].ids) if prompt.prefix else []
        markers = []
        for slot in prompt.slots:
            markers.append(len(ids))
            ids.append(self.marker_ids[prompt.kind])
            ids.extend(words[slot].ids)
        zeros = [0] * len(ids)
        return TextTokens(ids, zeros, list(zeros)), markers

    def pack(self, prefix_length: int, slot_lengths: Sequence[int]) -> list[list[int]]:
        """Slot indices grouped into rows, in order: at most ``max_slots`` per row and ``max_prompt_tokens`` prompt
        tokens (a slot longer than that alone gets a row of its own)."""
        rows: list[list[int]] = []
        current: list[int] = []
        used = prefix_length
        for index, length in enumerate(slot_lengths):
            if current and (len(current) >= self.max_slots or used + length > self.max_prompt_tokens):
                rows.append(current)
                current, used = [], prefix_length
            current.append(index)
            used += length
        if current:
            rows.append(current)
        return rows
