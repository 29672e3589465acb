"""A model directory's ``config.json`` read without torch or transformers (the ONNX inference path).

:class:`HugieConfig` holds the span head settings, decoding defaults, instruction templates and, for
an export, its ``onnx`` section; every other key is kept as read in ``extra``. The torch model's
``PretrainedConfig`` (:class:`hugie.modeling.GlobalPointerConfig`) takes the same keys and defaults.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import HugieError
from .instructions import default_templates_dict

CONFIG_FILE = "config.json"

#: Weight files ``GlobalPointerModel.from_pretrained`` reads; a directory with neither is an export (ONNX only).
TORCH_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def has_torch_weights(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds torch weights (else it is an export: see ``hugie.export.model_from_export``)."""
    return any((Path(directory) / name).exists() for name in TORCH_WEIGHT_FILES)


#: ``instruction``: one prompt before the text per encoder row (the HugIE layout); ``slots``: K prompts, each
#: behind a marker token, and span logits per prompt (a whole schema in one row).
ARCHITECTURES = ("instruction", "slots")

#: A slot model's prompt settings: marker tokens (vocabulary entries no text can produce), at most
#: ``max_slots`` prompts, ``max_prompt_tokens`` prompt tokens and ``max_subjects`` relation subjects per row
#: (1: one subject per pass), the rank of its slot × token biases, and ``reuse_layers``: how many encoder layers of
#: a relation row's text come from its text's entity pass (0: every row reads its text through every layer), and
#: ``mark_subject``: whether such a row adds a learned vector to the kept states of its subject's mentions.
SLOT_DEFAULTS = {"markers": {"entity": "[E]", "relation": "[R]"}, "max_slots": 16, "max_prompt_tokens": 128,
                 "max_subjects": 1, "rank": 32, "reuse_layers": 0, "mark_subject": False}

#: The slot settings that only pack or route rows, not shape weights: a training config may change them for a slot
#: model it starts from, and two models that differ only in them can be averaged.
SLOT_LIMITS = ("max_slots", "max_prompt_tokens", "max_subjects", "reuse_layers")


class SlotArchitecture:
    """What a config's ``architecture`` and ``slots`` attributes imply; shared by :class:`HugieConfig` and the torch
    config."""

    @property
    def slotted(self) -> bool:
        """Whether one row carries several prompts (slots), each marked by a marker token."""
        return self.architecture == "slots"

    @property
    def weight_layout(self) -> tuple:
        """The architecture and the slot settings that shape its weights (all but ``SLOT_LIMITS``)."""
        return self.architecture, {k: v for k, v in (self.slots or {}).items() if k not in SLOT_LIMITS}

    @property
    def reuse_layers(self) -> int:
        """Encoder layers a relation row takes from its text's entity pass instead of running them (0: none)."""
        return int((self.slots or {}).get("reuse_layers", 0)) if self.slotted else 0

    @property
    def mark_subject(self) -> bool:
        """Whether a relation row that reuses its text's states marks its subject's mentions in them."""
        return bool(self.reuse_layers and (self.slots or {}).get("mark_subject", False))


@dataclass
class HugieConfig(SlotArchitecture):
    """Span head settings, the encoder's own config, instruction templates and decoding defaults."""

    encoder: dict = field(default_factory=dict)
    head_size: int = 64
    max_span_width: int = 48
    threshold: float = 0.5
    max_seq_length: int = 512
    relation_threshold: float | None = None  # relation-object passes of a schema; None: threshold
    one_type_per_span: bool = False  # entity passes: a span keeps only its best type
    flat_ner: bool = False  # entity passes: no two spans overlap (across types, best score first)
    instructions: dict = field(default_factory=default_templates_dict)
    architecture: str = "instruction"  # "instruction": one prompt per row; "slots": K prompts per row (SLOT_DEFAULTS)
    slots: dict | None = None  # slot models: marker tokens, max_slots, max_prompt_tokens, rank
    onnx: dict | None = None  # an export's graph: file, quantize, fp32_matmuls, outlier_channels, ...
    extra: dict = field(default_factory=dict)  # every other key of config.json (model_type, transformers', ...)

    def __post_init__(self):
        self.encoder = self.encoder or {}
        self.instructions = self.instructions or default_templates_dict()
        if self.architecture not in ARCHITECTURES:
            raise HugieError("E015", name="config.json", reason=f"architecture {self.architecture!r} is not one of "
                                                                f"{', '.join(ARCHITECTURES)}")
        if self.architecture == "slots":
            self.slots = {**SLOT_DEFAULTS, **(self.slots or {})}

    @classmethod
    def from_dict(cls, data: dict) -> HugieConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> HugieConfig:
        """Read ``config.json`` from a model directory (or the file itself)."""
        path = Path(path)
        file = path / CONFIG_FILE if path.is_dir() else path
        if not file.is_file():
            raise HugieError("E012", path=path, file=CONFIG_FILE)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise HugieError("E015", name=str(path), reason=f"{file} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise HugieError("E015", name=str(path), reason=f"{file} must hold a JSON object")
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        out = {**self.extra, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}}
        if out["onnx"] is None:
            del out["onnx"]
        return out
