"""ONNX graphs for span scoring: the fused ``hugie::SpanScore`` node or a standard-ONNX fallback.

Both produce ``spans`` int64 [N, 3] rows (batch, start, end inclusive) ordered by (batch, start,
end) and ``scores`` float [N] logits, exactly like :func:`hugie.scoring.span_scores_reference`.
The logit threshold is a graph input (float scalar ``threshold``), so one session serves every
threshold; the maximum span width is an attribute (one per model).

The fallback never builds a B x L x L tensor: RoPE tables are computed from the runtime shape,
rotated k is padded by W on the sequence axis, and a ``Loop`` over the W band offsets computes one
[B, L] slice of scores per offset (memory O(B * L * (D + W))). ``NonZero`` over the [B, L, W] keep
mask yields (batch, start, offset) in row-major order, which is already (batch, start, end) order.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from hugie.scoring import ROPE_BASE

DOMAIN = "hugie"
OP_TYPE = "SpanScore"
INPUTS = ("q", "k", "start_bias", "end_bias", "span_mask", "threshold")
OUTPUTS = ("spans", "scores")
FALLBACK_PREFIX = "hugie_span/"
MIN_FALLBACK_OPSET = 13  # Slice/Pad/Unsqueeze/ReduceSum with tensor inputs


def span_scorer_model(dim: int, max_width: int, use_custom_op: bool, opset: int = 17) -> onnx.ModelProto:
    """Standalone scorer: inputs q, k [B, L, dim], start_bias, end_bias, span_mask [B, L], threshold (scalar)."""
    if dim % 2:
        raise ValueError(f"span scorer dim must be even for RoPE pairs, got {dim}")
    if not use_custom_op and opset < MIN_FALLBACK_OPSET:
        raise ValueError(f"the fallback span scorer needs opset >= {MIN_FALLBACK_OPSET}, got {opset}")
    inputs = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "length", dim]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", "length", dim]),
        helper.make_tensor_value_info("start_bias", TensorProto.FLOAT, ["batch", "length"]),
        helper.make_tensor_value_info("end_bias", TensorProto.FLOAT, ["batch", "length"]),
        helper.make_tensor_value_info("span_mask", TensorProto.INT64, ["batch", "length"]),
        _threshold_info(),
    ]
    nodes = _scorer_nodes(INPUTS, OUTPUTS, max_width, use_custom_op, FALLBACK_PREFIX)
    graph = helper.make_graph(nodes, "hugie_span_scorer", inputs, _output_infos())
    opsets = [helper.make_opsetid("", opset)]
    if use_custom_op:
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="hugie")
    model.ir_version = helper.find_min_ir_version_for(list(opsets), ignore_unknown=True)
    return model


def attach_span_scorer(encoder: onnx.ModelProto, max_width: int, use_custom_op: bool) -> onnx.ModelProto:
    """Append the scorer to ``encoder`` (outputs q, k, start_bias, end_bias) and return a new model.

    Adds graph inputs ``span_mask`` int64 [B, L] and ``threshold`` float scalar (a logit); the graph
    outputs become ``spans`` and ``scores``.
    """
    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    produced = {o.name: o for o in graph.output}
    missing = [name for name in INPUTS[:4] if name not in produced]
    if missing:
        raise ValueError(
            f"encoder graph lacks outputs {missing}; it has {sorted(produced)} "
            "(expected q, k [B, L, D] and start_bias, end_bias [B, L])"
        )
    taken = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    taken |= {out for node in graph.node for out in node.output}
    clashes = sorted(taken & {*INPUTS[4:], *OUTPUTS})
    if clashes:
        raise ValueError(f"encoder graph already defines {clashes}; cannot attach the span scorer")
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not use_custom_op and default_opset < MIN_FALLBACK_OPSET:
        raise ValueError(f"the fallback span scorer needs opset >= {MIN_FALLBACK_OPSET}, encoder has {default_opset}")

    # span_mask takes [B, L] from start_bias when its shape is known.
    bias_type = produced["start_bias"].type.tensor_type
    dims: list[str | int | None] = ["batch", "length"]
    if bias_type.HasField("shape") and len(bias_type.shape.dim) == 2:
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in bias_type.shape.dim]
    graph.input.extend([helper.make_tensor_value_info("span_mask", TensorProto.INT64, dims), _threshold_info()])

    graph.node.extend(_scorer_nodes(INPUTS, OUTPUTS, max_width, use_custom_op, FALLBACK_PREFIX))
    del graph.output[:]
    graph.output.extend(_output_infos())
    if use_custom_op and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


def _threshold_info() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [])


def _output_infos() -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info("spans", TensorProto.INT64, ["num_spans", 3]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["num_spans"]),
    ]


def _scorer_nodes(inputs, outputs, max_width, use_custom_op, prefix) -> list[onnx.NodeProto]:
    if use_custom_op:
        return [
            helper.make_node(
                OP_TYPE, list(inputs), list(outputs), name=prefix + OP_TYPE, domain=DOMAIN, max_width=int(max_width)
            )
        ]
    return _fallback_nodes(*inputs, *outputs, max_width=int(max_width), prefix=prefix)


class _Builder:
    """Small helper that names every value and node with a common prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int | list[str] = 1, **attrs):
        if isinstance(outputs, int):
            outputs = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.name(op_type), **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, values, dtype: int, hint: str = "const", scalar: bool = False) -> str:
        values = list(values) if not scalar else [values]
        dims = [] if scalar else [len(values)]
        tensor = helper.make_tensor(self.name(hint) + "_value", dtype, dims, values)
        return self.op("Constant", [], hint, value=tensor)


def _fallback_nodes(
    q: str, k: str, start_bias: str, end_bias: str, span_mask: str, threshold: str, spans: str, scores: str,
    *, max_width: int, prefix: str,
) -> list[onnx.NodeProto]:
    g = _Builder(prefix)
    i64, f32, f64 = TensorProto.INT64, TensorProto.FLOAT, TensorProto.DOUBLE
    if max_width <= 0:  # empty band: constant empty outputs
        g.op("Constant", [], outputs=[spans], value=helper.make_tensor(g.name("no_spans"), i64, [0, 3], []))
        g.op("Constant", [], outputs=[scores], value=helper.make_tensor(g.name("no_scores"), f32, [0], []))
        return g.nodes

    axis0, axis1, axis2, axis3 = (g.const([a], i64, f"axis{a}") for a in range(4))
    zero1, one1, two1, three1 = (g.const([v], i64, f"c{v}") for v in range(4))

    # Shapes: B, L, D as 1-element tensors; band width Weff = min(W, L).
    shape = g.op("Shape", [q], "shape")
    len1 = g.op("Slice", [shape, one1, two1], "length")
    dim1 = g.op("Slice", [shape, two1, three1], "dim")
    bl = g.op("Slice", [shape, zero1, two1], "batch_length")
    width1 = g.op("Min", [g.const([max_width], i64, "max_width"), len1], "width")
    trips = g.op("Squeeze", [g.op("Max", [width1, one1], "trips1"), axis0], "trips")

    # RoPE tables [L, D] (angles and cos/sin in double, rounded to float, as in scoring.rope_tables).
    length = g.op("Squeeze", [len1, axis0], "length_scalar")
    dim = g.op("Squeeze", [dim1, axis0], "dim_scalar")
    zero, one, two = (g.const(v, i64, f"s{v}", scalar=True) for v in (0, 1, 2))
    pos = g.op("Cast", [g.op("Range", [zero, length, one], "pos")], "pos_f64", to=f64)
    evens = g.op("Cast", [g.op("Range", [zero, dim, two], "evens")], "evens_f64", to=f64)
    expo = g.op("Div", [g.op("Neg", [evens]), g.op("Cast", [dim], "dim_f64", to=f64)], "exponent")
    inv_freq = g.op("Pow", [g.const(ROPE_BASE, f64, "rope_base", scalar=True), expo], "inv_freq")
    angles = g.op("Mul", [g.op("Unsqueeze", [pos, axis1]), g.op("Unsqueeze", [inv_freq, axis0])], "angles")
    half1 = g.op("Div", [dim1, two1], "half")
    pairs_shape = g.op("Concat", [bl, half1, two1], "pairs_shape", axis=0)  # [B, L, D/2, 2]
    table_shape = g.op("Concat", [len1, dim1], "table_shape", axis=0)  # [L, D]

    def table(fn: str) -> str:
        val = g.op("Cast", [g.op(fn, [angles])], fn.lower() + "_f32", to=f32)
        col = g.op("Unsqueeze", [val, axis2])
        return g.op("Reshape", [g.op("Concat", [col, col], axis=2), table_shape], fn.lower() + "_table")

    cos, sin = table("Cos"), table("Sin")

    def rope(x: str) -> str:
        pairs = g.op("Reshape", [x, pairs_shape], "pairs")
        even = g.op("Slice", [pairs, zero1, one1, axis3], "even")
        odd = g.op("Slice", [pairs, one1, two1, axis3], "odd")
        rotated = g.op("Reshape", [g.op("Concat", [g.op("Neg", [odd]), even], axis=3), shape], "rotated")
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])], "rope")

    qr, kr = rope(q), rope(k)

    # Pad the end-side tensors by Weff along L so offset w reads columns [w, w + L).
    def pads(rank: int) -> str:
        parts = [zero1] * (rank + 1) + [width1] + [zero1] * (rank - 2)
        return g.op("Concat", parts, "pads", axis=0)

    k_pad = g.op("Pad", [kr, pads(3)], "k_pad")
    end_pad = g.op("Pad", [g.op("Cast", [end_bias], "end_f64", to=f64), pads(2)], "end_pad")
    mask_pad = g.op("Pad", [span_mask, pads(2)], "mask_pad")  # zero padding = not allowed
    start_mask = g.op("Cast", [span_mask], "start_mask", to=TensorProto.BOOL)
    start_f64 = g.op("Cast", [start_bias], "start_f64", to=f64)
    sqrt_dim = g.op("Sqrt", [g.op("Cast", [dim], "dim_f64b", to=f64)], "sqrt_dim")
    thr = g.op("Cast", [threshold], "threshold_f64", to=f64)

    # Loop body: offset w -> scores [B, L] (float) and keep [B, L] (bool).
    b = _Builder(prefix + "band/")
    it, cond_in = b.name("iter"), b.name("cond_in")
    w1 = b.op("Unsqueeze", [it, axis0], "w")
    end = b.op("Add", [w1, len1], "w_end")
    k_w = b.op("Slice", [k_pad, w1, end, axis1], "k_w")
    dot = b.op("ReduceSum", [b.op("Mul", [qr, k_w]), axis2], "dot", keepdims=0)
    # float32 dot, then double epilogue like the NumPy reference.
    s = b.op("Div", [b.op("Cast", [dot], to=f64), sqrt_dim], "scaled")
    s = b.op("Add", [b.op("Add", [s, start_f64]), b.op("Slice", [end_pad, w1, end, axis1])], "score")
    end_mask = b.op("Cast", [b.op("Slice", [mask_pad, w1, end, axis1])], "end_mask", to=TensorProto.BOOL)
    keep = b.op("And", [b.op("And", [start_mask, end_mask]), b.op("Greater", [s, thr])], "keep")
    cond_out = b.op("Identity", [cond_in], "cond_out")
    score_out = b.op("Cast", [s], "score_f32", to=f32)
    body = helper.make_graph(
        b.nodes,
        prefix + "band_body",
        [helper.make_tensor_value_info(it, i64, []), helper.make_tensor_value_info(cond_in, TensorProto.BOOL, [])],
        [
            helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
            helper.make_tensor_value_info(score_out, f32, None),
            helper.make_tensor_value_info(keep, TensorProto.BOOL, None),
        ],
    )
    band_scores, band_keep = g.op("Loop", [trips, ""], outputs=2, body=body)  # [W, B, L] each

    keep_blw = g.op("Transpose", [band_keep], "keep_blw", perm=[1, 2, 0])
    scores_blw = g.op("Transpose", [band_scores], "scores_blw", perm=[1, 2, 0])
    index = g.op("Transpose", [g.op("NonZero", [keep_blw])], "index", perm=[1, 0])  # [N, 3]: b, i, w
    g.op("GatherND", [scores_blw, index], outputs=[scores])
    batch_col = g.op("Slice", [index, zero1, one1, axis1], "batch_col")
    start_col = g.op("Slice", [index, one1, two1, axis1], "start_col")
    offset_col = g.op("Slice", [index, two1, three1, axis1], "offset_col")
    end_col = g.op("Add", [start_col, offset_col], "end_col")
    g.op("Concat", [batch_col, start_col, end_col], outputs=[spans], axis=1)
    return g.nodes
