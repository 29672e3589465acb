"""hugie — instruction-driven information extraction with a Global Pointer span model."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import HugieError  # noqa: E402
from .types import Entity, Relation, Schema, SchemaResult, Span  # noqa: E402

__all__ = ["Entity", "Extractor", "HugieError", "Relation", "Schema", "SchemaResult", "Span", "__version__"]


def __getattr__(name):
    # torch/transformers load lazily, so `import hugie` (e.g. for the SDK types) stays light
    if name == "Extractor":
        from .extractor import Extractor

        return Extractor
    raise AttributeError(name)
