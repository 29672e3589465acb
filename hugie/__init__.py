"""hugie — instruction-driven information extraction with a Global Pointer span model."""

from __future__ import annotations

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)

from .errors import HugieError  # noqa: E402
from .types import Entity, Relation, Schema, SchemaResult, Span  # noqa: E402

__all__ = ["Entity", "Extractor", "HugieError", "Relation", "Schema", "SchemaResult", "Span", "__version__"]


def __getattr__(name):
    # the Extractor (onnxruntime, tokenizers, jieba) loads lazily, so `import hugie` (the SDK types) stays light
    if name == "Extractor":
        from .extractor import Extractor

        return Extractor
    raise AttributeError(name)
