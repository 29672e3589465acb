"""Prompts of slot models: several prompts, each behind a marker token, before the text of one row.

An entity schema is ``[E] 人名 [E] 公司 …``; the predicates of one subject are
``【雅典娜女神】 [R] 导演 [R] 主演 …``; a free-form instruction is one ``[E]`` slot. A model whose
``slots.max_subjects`` is above 1 reads several subjects in one row, each cue before its own slots:
``【雅典娜女神】 [R] 导演 【张艺谋】 [R] 妻子 …``. Markers are
vocabulary pieces no text can produce, so a prompt's words never turn into a marker. Training and
inference build prompts here, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
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
    """One row's prompt: its slots' words and the subject cue of each, written before the first slot of every run
    of slots sharing it (``prefix``: one cue for all slots; ``cues``: one per slot, several subjects in one row)."""

    kind: str  # ENTITY or RELATION: which marker goes before each slot
    slots: tuple[str, ...]
    prefix: str = ""
    cues: tuple[str, ...] = ()

    def slot_cues(self) -> tuple[str, ...]:
        return self.cues or (self.prefix,) * len(self.slots)


class PromptTokenizer:
    """Tokens of prompts for a slot model (its ``config.slots`` markers), with each slot's marker index."""

    def __init__(self, tokenizer: HugieTokenizer, slots: dict):
        self.tokenizer = tokenizer
        self.marker_ids = {kind: tokenizer.marker_id(slots["markers"][kind]) for kind in MARKER_KINDS}
        self.max_slots = int(slots["max_slots"])
        self.max_prompt_tokens = int(slots["max_prompt_tokens"])
        self.max_subjects = int(slots.get("max_subjects", 1))

    def words(self, texts: Sequence[str]) -> dict[str, TextTokens]:
        unique = list(dict.fromkeys(texts))
        return dict(zip(unique, self.tokenizer.tokenize(unique)))

    def slot_length(self, tokens: TextTokens) -> int:
        """Tokens a slot adds to a prompt: its marker and its words."""
        return 1 + len(tokens)

    def encode(self, prompt: Prompt, words: dict[str, TextTokens] | None = None) -> tuple[TextTokens, list[int]]:
        """The prompt's tokens (offsets unused: prompts are never decoded) and each slot's marker index."""
        cues = prompt.slot_cues()
        words = words if words is not None else self.words([*cues, *prompt.slots])
        ids: list[int] = []
        markers = []
        for index, (slot, cue) in enumerate(zip(prompt.slots, cues)):
            if cue and (index == 0 or cue != cues[index - 1]):
                ids.extend(words[cue].ids)
            markers.append(len(ids))
            ids.append(self.marker_ids[prompt.kind])
            ids.extend(words[slot].ids)
        zeros = [0] * len(ids)
        return TextTokens(ids, zeros, list(zeros)), markers

    def pack(self, slot_lengths: Sequence[int], cues: Sequence[tuple[Hashable, int]] | None = None) -> list[list[int]]:
        """Slot indices grouped into rows, in order: at most ``max_slots`` per row, ``max_prompt_tokens`` prompt
        tokens and ``max_subjects`` subjects. ``cues``: each slot's (subject cue, its length in tokens), slots of one
        subject next to each other; a cue counts once per row it starts slots in. A slot longer than the budget
        alone gets a row of its own."""
        cues = cues or [(None, 0)] * len(slot_lengths)
        rows: list[list[int]] = []
        current: list[int] = []
        used = subjects = 0
        for index, (length, (cue, cue_length)) in enumerate(zip(slot_lengths, cues)):
            new_subject = not current or cue != cues[current[-1]][0]
            cost = length + (cue_length if new_subject else 0)
            if current and (len(current) >= self.max_slots or used + cost > self.max_prompt_tokens
                            or (new_subject and subjects >= self.max_subjects)):
                rows.append(current)
                current, used, subjects, cost = [], 0, 0, length + cue_length
                new_subject = True
            current.append(index)
            used += cost
            subjects += new_subject
        if current:
            rows.append(current)
        return rows
