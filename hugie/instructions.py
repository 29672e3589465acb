"""Instruction templates, in one place and versioned with the model.

The templates a model was trained with are saved in its config (``instructions``) and loaded
back, so training and inference never drift.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .errors import HugieError

TEMPLATE_VERSION = 1


@dataclass(frozen=True)
class InstructionTemplates:
    """Templates for one language; ``{type}``, ``{subject}`` and ``{relation}`` are filled in."""

    language: str
    entity: str
    relation: str
    version: int = TEMPLATE_VERSION

    def for_entity(self, entity_type: str) -> str:
        return self.entity.format(type=entity_type)

    def for_relation(self, subject: str, relation: str) -> str:
        return self.relation.format(subject=subject, relation=relation)

    def to_dict(self) -> dict:
        return asdict(self)


TEMPLATES = {
    "zh": InstructionTemplates("zh", "找到文章中所有【{type}】类型的实体？",
                               "找到文章中【{subject}】的【{relation}】？"),
    "en": InstructionTemplates("en", "Find all entities of type [{type}].", "Find the [{relation}] of [{subject}]."),
}

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def templates(language: str, saved: dict | None = None) -> InstructionTemplates:
    """The templates for ``language``: the model's saved ones when given, else the defaults."""
    if saved and language in saved:
        return InstructionTemplates(**saved[language])
    if language not in TEMPLATES:
        raise HugieError("E018", language=language, choices=", ".join(TEMPLATES))
    return TEMPLATES[language]


def detect_language(*texts: str) -> str:
    """'zh' when any of the texts contains CJK ideographs, else 'en'."""
    return "zh" if any(_CJK.search(t or "") for t in texts) else "en"


def default_templates_dict() -> dict:
    return {lang: t.to_dict() for lang, t in TEMPLATES.items()}
