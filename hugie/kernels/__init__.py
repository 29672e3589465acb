"""Fused span scoring for onnxruntime: the ``hugie::SpanScore`` custom op and its graph helpers.

``custom_op_library()`` returns the path of an already-built custom-op library, or ``None`` (never
building anything); ``build_library()`` compiles it (``hugie kernels build``). ``span_scorer_model`` /
``attach_span_scorer`` emit either the fused node or an equivalent standard-ONNX fallback subgraph,
both taking the logit threshold as a graph input.
"""

from hugie.kernels.build import build_library, cache_dir, custom_op_library, default_library_path, library_has_cuda
from hugie.kernels.graph import attach_span_scorer, span_scorer_model

__all__ = ["attach_span_scorer", "build_library", "cache_dir", "custom_op_library", "default_library_path",
           "library_has_cuda", "span_scorer_model"]
