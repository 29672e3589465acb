"""Fused span scoring for onnxruntime: the ``hugie::SpanScore`` custom op and its graph helpers.

``custom_op_library()`` builds (once, cached) and returns the custom-op library path, or ``None``
when it is unavailable; ``span_scorer_model`` / ``attach_span_scorer`` emit either the fused node
or an equivalent standard-ONNX fallback subgraph.
"""

from hugie.kernels.build import cache_dir, custom_op_library, library_has_cuda
from hugie.kernels.graph import attach_span_scorer, span_scorer_model

__all__ = ["attach_span_scorer", "cache_dir", "custom_op_library", "library_has_cuda", "span_scorer_model"]
