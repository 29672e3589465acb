"""ONNX graphs for span scoring: the fused ``hugie::SpanScore`` node or a standard-ONNX fallback.

The scorer takes K prompt slots per row: q [B, K, L, D] (slot-specific), k [B, L, D] (shared by a
row's slots), start_bias / end_bias [B, K, L], span_mask [B, L]. Both forms produce ``spans`` int64
[N, 4] rows (batch, slot, start, end inclusive) ordered by (batch, slot, start, end) and ``scores``
float [N] logits, exactly like :func:`hugie.scoring.span_scores_reference`. The logit threshold
is a graph input (float scalar ``threshold``), so one session serves every threshold; the maximum
span width is an attribute (one per model).

The fallback never builds a B x L x L tensor: RoPE tables are computed from the runtime shape,
rotated k (once per row, as [B, 1, L, D] so it broadcasts over the slots) is padded by W on the
sequence axis, and a ``Loop`` over the W band offsets computes one [B, K, L] slice of scores per
offset (memory O(B * K * L * (D + W))). ``NonZero`` over the [B, K, L, W] keep mask yields
(batch, slot, start, offset) in row-major order, which is already (batch, slot, start, end) order.
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
    """Standalone K-slot scorer: inputs q [B, K, L, dim], k [B, L, dim], start_bias, end_bias [B, K, L],
    span_mask [B, L], threshold (scalar)."""
    if dim % 2:
        raise ValueError(f"span scorer dim must be even for RoPE pairs, got {dim}")
    if not use_custom_op and opset < MIN_FALLBACK_OPSET:
        raise ValueError(f"the fallback span scorer needs opset >= {MIN_FALLBACK_OPSET}, got {opset}")
    inputs = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "slots", "length", dim]),
        helper.make_tensor_value_info("k", TensorProto.FLOAT, ["batch", "length", dim]),
        helper.make_tensor_value_info("start_bias", TensorProto.FLOAT, ["batch", "slots", "length"]),
        helper.make_tensor_value_info("end_bias", TensorProto.FLOAT, ["batch", "slots", "length"]),
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

    Two kinds of encoder, told apart by the rank of the ``q`` output's declared shape: one-slot
    (q [B, L, D], biases [B, L]; the scorer sees them unsqueezed to K = 1, so every slot column is 0)
    and slot-conditioned (q [B, K, L, D], biases [B, K, L]); k is [B, L, D] in both. Adds graph
    inputs ``span_mask`` int64 [B, L] and ``threshold`` float scalar (a logit); the graph outputs
    become ``spans`` [N, 4] (batch, slot, start, end) and ``scores``, followed by any other output of
    ``encoder`` (a ``reuse_layers`` model's ``layer_states``).
    """
    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    produced = {o.name: o for o in graph.output}
    missing = [name for name in INPUTS[:4] if name not in produced]
    if missing:
        raise ValueError(
            f"encoder graph lacks outputs {missing}; it has {sorted(produced)} "
            "(expected q [B, L, D] or [B, K, L, D], k [B, L, D], start_bias, end_bias [B, L] or [B, K, L])"
        )
    q_rank = _declared_rank(produced["q"])
    if q_rank not in (3, 4):
        got = "no shape" if q_rank is None else f"rank {q_rank}"
        raise ValueError(f"encoder output q must declare a rank-3 shape [B, L, D] (one slot) or a rank-4 shape "
                         f"[B, K, L, D] (K slots), got {got}")
    taken = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    taken |= {out for node in graph.node for out in node.output}
    clashes = sorted(taken & {*INPUTS[4:], *OUTPUTS})
    if clashes:
        raise ValueError(f"encoder graph already defines {clashes}; cannot attach the span scorer")
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not use_custom_op and default_opset < MIN_FALLBACK_OPSET:
        raise ValueError(f"the fallback span scorer needs opset >= {MIN_FALLBACK_OPSET}, encoder has {default_opset}")

    # span_mask takes [B, L] from k [B, L, D] when its shape is known.
    k_type = produced["k"].type.tensor_type
    dims: list[str | int | None] = ["batch", "length"]
    if k_type.HasField("shape") and len(k_type.shape.dim) == 3:
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in k_type.shape.dim[:2]]
    graph.input.extend([helper.make_tensor_value_info("span_mask", TensorProto.INT64, dims), _threshold_info()])

    inputs = list(INPUTS)
    if q_rank == 3:  # one-slot encoder: q [B, L, D] -> [B, 1, L, D], biases [B, L] -> [B, 1, L]
        g = _Builder(FALLBACK_PREFIX + "one_slot/")
        # Unsqueeze takes its axes as an input from opset 13, as an attribute before (fused op only).
        axes_input = default_opset >= 13
        axes = [g.const([1], TensorProto.INT64, "axis1")] if axes_input else []
        attrs = {} if axes_input else {"axes": [1]}
        for index in (0, 2, 3):
            inputs[index] = g.op("Unsqueeze", [inputs[index], *axes], inputs[index] + "_slots", **attrs)
        graph.node.extend(g.nodes)
    graph.node.extend(_scorer_nodes(inputs, OUTPUTS, max_width, use_custom_op, FALLBACK_PREFIX))
    others = [o for o in graph.output if o.name not in INPUTS[:4]]
    del graph.output[:]
    graph.output.extend(_output_infos() + others)
    if use_custom_op and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return model


def _declared_rank(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def _threshold_info() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [])


def _output_infos() -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info("spans", TensorProto.INT64, ["num_spans", 4]),
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
        g.op("Constant", [], outputs=[spans], value=helper.make_tensor(g.name("no_spans"), i64, [0, 4], []))
        g.op("Constant", [], outputs=[scores], value=helper.make_tensor(g.name("no_scores"), f32, [0], []))
        return g.nodes

    axis0, axis1, axis2, axis3 = (g.const([a], i64, f"axis{a}") for a in range(4))
    last_axis = g.const([-1], i64, "last_axis")
    zero1, one1, two1, three1, four1 = (g.const([v], i64, f"c{v}") for v in range(5))

    # Shapes from q [B, K, L, D]: L, D as 1-element tensors; band width Weff = min(W, L).
    shape = g.op("Shape", [q], "shape")
    len1 = g.op("Slice", [shape, two1, three1], "length")
    dim1 = g.op("Slice", [shape, three1, four1], "dim")
    width1 = g.op("Min", [g.const([max_width], i64, "max_width"), len1], "width")
    trips = g.op("Squeeze", [g.op("Max", [width1, one1], "trips1"), axis0], "trips")

    # RoPE tables [L, D] (angles and cos/sin in double, rounded to float, as in scoring.rope_tables);
    # they broadcast over the leading axes of q [B, K, L, D] and k [B, L, D].
    length = g.op("Squeeze", [len1, axis0], "length_scalar")
    dim = g.op("Squeeze", [dim1, axis0], "dim_scalar")
    zero, one, two = (g.const(v, i64, f"s{v}", scalar=True) for v in (0, 1, 2))
    pos = g.op("Cast", [g.op("Range", [zero, length, one], "pos")], "pos_f64", to=f64)
    evens = g.op("Cast", [g.op("Range", [zero, dim, two], "evens")], "evens_f64", to=f64)
    expo = g.op("Div", [g.op("Neg", [evens]), g.op("Cast", [dim], "dim_f64", to=f64)], "exponent")
    inv_freq = g.op("Pow", [g.const(ROPE_BASE, f64, "rope_base", scalar=True), expo], "inv_freq")
    angles = g.op("Mul", [g.op("Unsqueeze", [pos, axis1]), g.op("Unsqueeze", [inv_freq, axis0])], "angles")
    half1 = g.op("Div", [dim1, two1], "half")
    table_shape = g.op("Concat", [len1, dim1], "table_shape", axis=0)  # [L, D]

    def table(fn: str) -> str:
        val = g.op("Cast", [g.op(fn, [angles])], fn.lower() + "_f32", to=f32)
        col = g.op("Unsqueeze", [val, axis2])
        return g.op("Reshape", [g.op("Concat", [col, col], axis=2), table_shape], fn.lower() + "_table")

    cos, sin = table("Cos"), table("Sin")

    def rope(x: str) -> str:
        """Rotate x [..., L, D] (any rank): pairs [..., L, D/2, 2] -> (-odd, even) -> back to x's shape."""
        x_shape = g.op("Shape", [x], "x_shape")
        lead = g.op("Slice", [x_shape, zero1, g.const([-1], i64, "minus1")], "lead")  # [..., L]
        pairs = g.op("Reshape", [x, g.op("Concat", [lead, half1, two1], "pairs_shape", axis=0)], "pairs")
        even = g.op("Slice", [pairs, zero1, one1, last_axis], "even")
        odd = g.op("Slice", [pairs, one1, two1, last_axis], "odd")
        rotated = g.op("Reshape", [g.op("Concat", [g.op("Neg", [odd]), even], axis=-1), x_shape], "rotated")
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])], "rope")

    # q per slot; k once per row, as [B, 1, L, D] so each band slice broadcasts over the K slots.
    qr = rope(q)
    kr = g.op("Unsqueeze", [rope(k), axis1], "k_rows")

    # Pad the end-side tensors by Weff along their L axis (axis 2) so offset w reads columns [w, w + L).
    def pads(rank: int) -> str:
        parts = [zero1] * (rank + 2) + [width1] + [zero1] * (rank - 3)
        return g.op("Concat", parts, "pads", axis=0)

    mask_rows = g.op("Unsqueeze", [span_mask, axis1], "mask_rows")  # [B, 1, L], shared by the slots
    k_pad = g.op("Pad", [kr, pads(4)], "k_pad")
    end_pad = g.op("Pad", [g.op("Cast", [end_bias], "end_f64", to=f64), pads(3)], "end_pad")
    mask_pad = g.op("Pad", [mask_rows, pads(3)], "mask_pad")  # zero padding = not allowed
    start_mask = g.op("Cast", [mask_rows], "start_mask", to=TensorProto.BOOL)
    start_f64 = g.op("Cast", [start_bias], "start_f64", to=f64)
    sqrt_dim = g.op("Sqrt", [g.op("Cast", [dim], "dim_f64b", to=f64)], "sqrt_dim")
    thr = g.op("Cast", [threshold], "threshold_f64", to=f64)

    # Loop body: offset w -> scores [B, K, L] (float) and keep [B, K, L] (bool).
    b = _Builder(prefix + "band/")
    it, cond_in = b.name("iter"), b.name("cond_in")
    w1 = b.op("Unsqueeze", [it, axis0], "w")
    end = b.op("Add", [w1, len1], "w_end")
    k_w = b.op("Slice", [k_pad, w1, end, axis2], "k_w")  # [B, 1, L, D]
    dot = b.op("ReduceSum", [b.op("Mul", [qr, k_w]), axis3], "dot", keepdims=0)  # [B, K, L]
    # float32 dot, then double epilogue like the NumPy reference.
    s = b.op("Div", [b.op("Cast", [dot], to=f64), sqrt_dim], "scaled")
    s = b.op("Add", [b.op("Add", [s, start_f64]), b.op("Slice", [end_pad, w1, end, axis2])], "score")
    end_mask = b.op("Cast", [b.op("Slice", [mask_pad, w1, end, axis2])], "end_mask", to=TensorProto.BOOL)
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
    band_scores, band_keep = g.op("Loop", [trips, ""], outputs=2, body=body)  # [W, B, K, L] each

    keep_bklw = g.op("Transpose", [band_keep], "keep_bklw", perm=[1, 2, 3, 0])
    scores_bklw = g.op("Transpose", [band_scores], "scores_bklw", perm=[1, 2, 3, 0])
    index = g.op("Transpose", [g.op("NonZero", [keep_bklw])], "index", perm=[1, 0])  # [N, 4]: b, s, i, w
    g.op("GatherND", [scores_bklw, index], outputs=[scores])
    batch_slot_start = g.op("Slice", [index, zero1, three1, axis1], "batch_slot_start")
    start_col = g.op("Slice", [index, two1, three1, axis1], "start_col")
    offset_col = g.op("Slice", [index, three1, four1, axis1], "offset_col")
    end_col = g.op("Add", [start_col, offset_col], "end_col")
    g.op("Concat", [batch_slot_start, end_col], outputs=[spans], axis=1)
    return g.nodes
