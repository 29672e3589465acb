"""SpanScore custom op and its standard-ONNX fallback against hugie.scoring.span_scores_reference.

Every scorer takes K prompt slots per row (q [B, K, L, D], k [B, L, D], biases [B, K, L], mask [B, L])
and returns [N, 4] rows (batch, slot, start, end).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from hugie.errors import HugieError
from hugie.kernels import (
    attach_span_scorer,
    build,
    build_library,
    custom_op_library,
    library_has_cuda,
    span_scorer_model,
)
from hugie.scoring import apply_rope, span_scores_banded, span_scores_reference

KERNEL_DIR = Path(build.__file__).resolve().parent
RTOL = ATOL = 1e-4


# ---------------------------------------------------------------------------------------------
# helpers


def make_inputs(rng, batch, slots, length, dim, mask_p=0.8):
    """K-slot scorer inputs; each slot has its own q and biases, so slots find different spans."""
    return {
        "q": rng.standard_normal((batch, slots, length, dim), dtype=np.float32),
        "k": rng.standard_normal((batch, length, dim), dtype=np.float32),
        "start_bias": rng.standard_normal((batch, slots, length), dtype=np.float32),
        "end_bias": rng.standard_normal((batch, slots, length), dtype=np.float32),
        "span_mask": (rng.random((batch, length)) < mask_p).astype(np.int64),
    }


def reference(x, threshold, width, scorer=span_scores_reference):
    return scorer(x["q"], x["k"], x["start_bias"], x["end_bias"], x["span_mask"], threshold, width)


def band_logits(x, width):
    """Reference logits of every in-band (i <= j < i + W) pair of every slot, for choosing safe thresholds."""
    qr, kr = apply_rope(x["q"]), apply_rope(x["k"])
    dim = x["q"].shape[-1]
    logits = np.einsum("bsid,bjd->bsij", qr, kr) / np.sqrt(dim)
    logits = logits + x["start_bias"][..., :, None] + x["end_bias"][..., None, :]
    length = x["q"].shape[2]
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    return logits[..., (offset >= 0) & (offset < width)].ravel()


def pick_threshold(x, width, mode, rng):
    """A float32-exact threshold at least 1e-3 away from every band logit (no near-ties)."""
    if mode == "all":
        return -1e30
    values = np.sort(band_logits(x, width))
    if mode == "none" or values.size == 0:
        return float(np.float32((values.max() if values.size else 0.0) + 1.0))
    start = int(rng.integers(0, values.size))
    for idx in list(range(start, values.size - 1)) + list(range(start - 1, -1, -1)):
        if values[idx + 1] - values[idx] > 2e-3:
            return float(np.float32((values[idx] + values[idx + 1]) / 2))
    return float(np.float32(values[-1] + 1.0))


def session(model, library=None):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    if library:
        opts.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def feeds(x, threshold):
    return {**x, "threshold": np.array(threshold, np.float32)}


def run_scorer(x, threshold, width, library=None):
    model = span_scorer_model(x["q"].shape[-1], width, use_custom_op=library is not None)
    return session(model, library).run(None, feeds(x, threshold))


def assert_same(got, want):
    spans, scores = got
    ref_spans, ref_scores = want
    assert spans.dtype == np.int64 and spans.ndim == 2 and spans.shape[1] == 4
    assert scores.dtype == np.float32 and scores.shape == (spans.shape[0],)
    np.testing.assert_array_equal(spans, ref_spans)
    np.testing.assert_allclose(scores, ref_scores, rtol=RTOL, atol=ATOL)


# (batch, slots, length, dim, max_width, threshold mode, mask probability)
EDGE_CASES = {
    "L1": (3, 1, 1, 8, 4, "all", 1.0),
    "L1_masked": (2, 3, 1, 4, 4, "all", 0.0),
    "all_masked": (3, 3, 17, 8, 5, "all", 0.0),
    "W_ge_L": (2, 3, 12, 8, 40, "quantile", 0.8),
    "W_eq_L": (2, 1, 12, 8, 12, "quantile", 0.8),
    "W1": (2, 3, 30, 8, 1, "quantile", 0.9),
    "nothing_above": (4, 3, 25, 16, 8, "none", 0.9),
    "everything_above": (3, 3, 40, 16, 8, "all", 0.9),
    "everything_above_full_mask": (2, 1, 33, 4, 64, "all", 1.0),
    "batch1": (1, 3, 50, 16, 10, "quantile", 0.8),
    "batch64": (64, 1, 24, 8, 6, "quantile", 0.8),
    "D2": (3, 3, 40, 2, 12, "quantile", 0.8),
    "D64": (3, 1, 70, 64, 32, "quantile", 0.8),
    "long_rows": (2, 3, 150, 16, 130, "quantile", 0.7),  # several CPU row tasks per batch
    "slots10": (2, 10, 40, 8, 8, "quantile", 0.8),
    "W0": (2, 3, 10, 8, 0, "all", 1.0),
    "B0": (0, 3, 10, 8, 4, "all", 1.0),  # empty batch
    "K0": (2, 0, 10, 8, 4, "all", 1.0),  # no prompt slots
    "L0": (2, 3, 0, 8, 4, "all", 1.0),
}


def random_cases(n=24, seed=1234):
    rng = np.random.default_rng(seed)
    cases = {}
    for c in range(n):
        cases[f"rand{c}"] = (
            int(rng.choice([1, 2, 3, 5, 8])),
            int(rng.choice([1, 3])),
            int(rng.integers(1, 90)),
            int(rng.choice([2, 4, 6, 16, 32, 64])),
            int(rng.choice([1, 3, 8, 16, 33, 200])),
            str(rng.choice(["quantile", "quantile", "quantile", "none", "all"])),
            float(rng.choice([0.3, 0.8, 1.0])),
        )
    return cases


CASES = {**EDGE_CASES, **random_cases()}


@pytest.fixture(scope="module")
def library():
    """The library, built explicitly (headers fetched from Debian when none are found locally), else a skip."""
    try:
        return str(build_library(fetch_headers=True))
    except HugieError as exc:
        pytest.skip(f"SpanScore custom op library cannot be built here: {exc.details.get('reason')}")


def case_inputs(name):
    batch, slots, length, dim, width, mode, mask_p = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = make_inputs(rng, batch, slots, length, dim, mask_p)
    return x, pick_threshold(x, width, mode, rng), width


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    x, threshold, width = case_inputs(request.param)
    return x, threshold, width, reference(x, threshold, width)


# ---------------------------------------------------------------------------------------------
# numerics


def test_custom_op_matches_reference(library, case):
    x, threshold, width, ref = case
    assert_same(run_scorer(x, threshold, width, library), ref)


def test_fallback_matches_reference(case):
    x, threshold, width, ref = case
    assert_same(run_scorer(x, threshold, width), ref)


def test_banded_reference_matches_reference(case):
    x, threshold, width, ref = case
    assert_same(reference(x, threshold, width, span_scores_banded), ref)


def test_custom_op_matches_fallback(library, case):
    x, threshold, width, _ = case
    fused = run_scorer(x, threshold, width, library)
    fallback = run_scorer(x, threshold, width)
    np.testing.assert_array_equal(fused[0], fallback[0])
    np.testing.assert_allclose(fused[1], fallback[1], rtol=RTOL, atol=ATOL)


def test_threshold_edge_modes_are_meaningful():
    rng = np.random.default_rng(0)
    x = make_inputs(rng, 2, 3, 20, 8, 1.0)
    for mode, expect_all in (("all", True), ("none", False)):
        thr = pick_threshold(x, 5, mode, rng)
        spans, _ = reference(x, thr, 5)
        band = sum(min(5, 20 - i) for i in range(20)) * 2 * 3
        assert len(spans) == (band if expect_all else 0)


def tie_inputs(slots):
    """Slot inputs where slot 0 of row 0 scores exactly start + end (q = 0, dyadic biases), so some of its
    logits equal the threshold 0.5 exactly; every other logit stays clear of it."""
    rng = np.random.default_rng(40 + slots)
    batch, length, dim, width, threshold = 3, 40, 16, 6, 0.5
    x = make_inputs(rng, batch, slots, length, dim, mask_p=0.75)
    x["q"][0, 0] = 0.0
    x["start_bias"][0, 0] = rng.integers(-4, 5, length) / 4
    x["end_bias"][0, 0] = rng.integers(-4, 5, length) / 4
    x["span_mask"][:, :3] = 0  # masked prompt positions before the text
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    band = (offset >= 0) & (offset < width)
    mask = x["span_mask"].astype(bool)
    logits = np.einsum("bsid,bjd->bsij", apply_rope(x["q"]), apply_rope(x["k"])) / np.sqrt(dim)
    logits = logits + x["start_bias"][..., :, None] + x["end_bias"][..., None, :]
    allowed = np.broadcast_to(mask[:, None, :, None] & mask[:, None, None, :] & band, logits.shape)
    ties = allowed & (logits == threshold)
    assert ties[0, 0].sum() > 0, "the exact-tie slot must hit the threshold"
    others = allowed.copy()
    others[0, 0] = False
    assert np.abs(logits[others] - threshold).min() > 1e-4, "no near-ties outside the exact-tie slot"
    return x, threshold, width, ties


@pytest.mark.parametrize("slots", [1, 3])
@pytest.mark.parametrize("impl", ["banded", "fallback", "fused"])
def test_slots_agree_with_the_reference(impl, slots, request):
    """Random K-slot inputs, masked positions, W < L and exact threshold ties (strict >) agree everywhere."""
    x, threshold, width, ties = tie_inputs(slots)
    ref = reference(x, threshold, width)
    spans = ref[0]
    assert set(np.unique(spans[:, 1])) == set(range(slots))
    assert not np.isin(spans[:, 2:], np.arange(3)).any(), "masked positions never start or end a span"
    assert (spans[:, 3] - spans[:, 2] < width).all() and (spans[:, 3] >= spans[:, 2]).all()
    tied = {tuple(t) for t in np.argwhere(ties)}
    assert tied and not tied & {tuple(r) for r in spans}, "a logit equal to the threshold is not a span"
    if slots > 1:  # different biases per slot: the slots of one row find different spans
        per_slot = [{tuple(r) for r in spans[(spans[:, 0] == 1) & (spans[:, 1] == s)][:, 2:]} for s in range(slots)]
        assert per_slot[0] != per_slot[1] != per_slot[2]

    if impl == "banded":
        got = reference(x, threshold, width, span_scores_banded)
    else:
        lib = request.getfixturevalue("library") if impl == "fused" else None
        got = run_scorer(x, threshold, width, lib)
    assert_same(got, ref)


def test_references_accept_one_slot_inputs():
    """q [B, L, D] and biases [B, L] are K = 1: the same rows as the unsqueezed inputs, slot column 0."""
    rng = np.random.default_rng(9)
    x = make_inputs(rng, 3, 1, 25, 8)
    one = (x["q"][:, 0], x["k"], x["start_bias"][:, 0], x["end_bias"][:, 0], x["span_mask"])
    for scorer in (span_scores_reference, span_scores_banded):
        spans, scores = scorer(*one, 0.3, 6)
        assert len(spans) and (spans[:, 1] == 0).all()
        assert_same((spans, scores), reference(x, 0.3, 6, scorer))
        empty = scorer(one[0][:0], one[1][:0], one[2][:0], one[3][:0], one[4][:0], 0.3, 6)
        assert empty[0].shape == (0, 4) and empty[1].shape == (0,)
    with pytest.raises(ValueError, match="k must have shape"):
        span_scores_reference(x["q"], x["k"][:, :5], x["start_bias"], x["end_bias"], x["span_mask"], 0.3, 6)


def test_one_session_many_shapes(library):
    """Dynamic B, K and L through a single session (cached RoPE table must grow and be reused)."""
    rng = np.random.default_rng(7)
    dim, width = 16, 9
    fused = session(span_scorer_model(dim, width, use_custom_op=True), library)
    fallback = session(span_scorer_model(dim, width, use_custom_op=False))
    for batch, slots, length in ((2, 1, 5), (1, 3, 90), (3, 2, 30), (4, 3, 130), (2, 1, 1), (0, 3, 7), (2, 0, 7)):
        x = make_inputs(rng, batch, slots, length, dim)
        ref = reference(x, 0.25, width)
        assert_same(fused.run(None, feeds(x, 0.25)), ref)
        assert_same(fallback.run(None, feeds(x, 0.25)), ref)


@pytest.mark.parametrize("fused", [False, True], ids=["fallback", "fused"])
def test_one_session_every_threshold(fused, request):
    """The threshold is a graph input: one session answers each threshold exactly like the reference."""
    lib = request.getfixturevalue("library") if fused else None
    rng = np.random.default_rng(17)
    x = make_inputs(rng, 3, 2, 40, 16, 0.9)
    scorer = session(span_scorer_model(16, 8, use_custom_op=fused), lib)
    counts = []
    for mode in ("all", "quantile", "quantile", "quantile", "none"):
        threshold = pick_threshold(x, 8, mode, rng)
        ref = reference(x, threshold, 8)
        assert_same(scorer.run(None, feeds(x, threshold)), ref)
        counts.append(len(ref[0]))
    assert counts[0] > 0 and counts[-1] == 0 and len(set(counts)) > 2, counts


def test_custom_op_rejects_odd_dim(library):
    model = span_scorer_model(4, 3, use_custom_op=True)
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "dim"  # make D symbolic in q
    model.graph.input[1].type.tensor_type.shape.dim[2].dim_param = "dim"  # and in k
    x = make_inputs(np.random.default_rng(0), 1, 2, 4, 3)
    with pytest.raises(Exception, match="even"):
        session(model, library).run(None, feeds(x, 0.0))


def test_custom_op_rejects_bad_shapes(library):
    model = span_scorer_model(4, 3, use_custom_op=True)
    for value in model.graph.input:  # make everything dynamic so ORT does not reject it first
        del value.type.tensor_type.shape.dim[:]
        value.type.tensor_type.ClearField("shape")
    sess = session(model, library)
    rng = np.random.default_rng(0)
    bad = {
        "q must have shape \\[B, K, L, D\\]": {"q": make_inputs(rng, 2, 1, 5, 4)["q"][:, 0]},
        "k must have shape \\[B, L, D\\]": {"k": np.zeros((2, 4, 4), np.float32)},
        "start_bias must have shape \\[B, K, L\\]": {"start_bias": np.zeros((2, 5), np.float32)},
        "end_bias must have shape \\[B, K, L\\]": {"end_bias": np.zeros((2, 3, 4), np.float32)},
        "span_mask must have shape \\[B, L\\]": {"span_mask": np.ones((2, 3, 5), np.int64)},
        "threshold must hold one float": {"threshold": np.zeros(2, np.float32)},
    }
    for message, change in bad.items():
        x = feeds(make_inputs(rng, 2, 3, 5, 4), 0.0)
        with pytest.raises(Exception, match=message):
            sess.run(None, {**x, **change})


# ---------------------------------------------------------------------------------------------
# graphs


def tiny_encoder(dim, slots=None, opset=17):
    """Encoder stand-in projecting hidden [B, L, H]: one-slot (``slots=None``: q [B, L, dim], biases [B, L])
    or slot-conditioned (q [B, slots, L, dim], biases [B, slots, L]); k is [B, L, dim] either way."""
    rng = np.random.default_rng(3)
    hidden = 6
    width = slots or 1
    weights = {
        "wq": rng.standard_normal((hidden, width * dim)).astype(np.float32),
        "wk": rng.standard_normal((hidden, dim)).astype(np.float32),
        "ws": rng.standard_normal((hidden, width)).astype(np.float32),
        "we": rng.standard_normal((hidden, width)).astype(np.float32),
    }
    nodes = [helper.make_node("MatMul", ["hidden", "wk"], ["k"])]
    if slots is None:
        outputs = {"q": ["B", "L", dim], "start_bias": ["B", "L"], "end_bias": ["B", "L"]}
        nodes += [helper.make_node("MatMul", ["hidden", "wq"], ["q"]),
                  helper.make_node("MatMul", ["hidden", "ws"], ["s1"]),
                  helper.make_node("MatMul", ["hidden", "we"], ["e1"])]
        if opset >= 13:
            weights["axes"] = np.array([-1], np.int64)
            nodes += [helper.make_node("Squeeze", ["s1", "axes"], ["start_bias"]),
                      helper.make_node("Squeeze", ["e1", "axes"], ["end_bias"])]
        else:
            nodes += [helper.make_node("Squeeze", ["s1"], ["start_bias"], axes=[-1]),
                      helper.make_node("Squeeze", ["e1"], ["end_bias"], axes=[-1])]
    else:
        outputs = {"q": ["B", slots, "L", dim], "start_bias": ["B", slots, "L"], "end_bias": ["B", slots, "L"]}
        weights["q_shape"] = np.array([0, 0, slots, dim], np.int64)
        nodes += [helper.make_node("MatMul", ["hidden", "wq"], ["q1"]),
                  helper.make_node("Reshape", ["q1", "q_shape"], ["q2"]),
                  helper.make_node("Transpose", ["q2"], ["q"], perm=[0, 2, 1, 3]),
                  helper.make_node("MatMul", ["hidden", "ws"], ["s1"]),
                  helper.make_node("Transpose", ["s1"], ["start_bias"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["hidden", "we"], ["e1"]),
                  helper.make_node("Transpose", ["e1"], ["end_bias"], perm=[0, 2, 1])]
    outputs["k"] = ["B", "L", dim]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["B", "L", hidden])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, outputs[name])
         for name in ("q", "k", "start_bias", "end_bias")],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 13 else 6
    return model, weights


def encode(weights, hidden, slots=None):
    """NumPy twin of :func:`tiny_encoder`: q, k, start_bias, end_bias."""
    batch, length, _ = hidden.shape
    q, k = hidden @ weights["wq"], hidden @ weights["wk"]
    sb, eb = hidden @ weights["ws"], hidden @ weights["we"]
    if slots is None:
        return q, k, sb[..., 0], eb[..., 0]
    q = q.reshape(batch, length, slots, -1).transpose(0, 2, 1, 3)
    return q, k, sb.transpose(0, 2, 1), eb.transpose(0, 2, 1)


def attach_and_run(encoder, width, fused, hidden, mask, threshold):
    lib = custom_op_library() if fused else None
    if fused and lib is None:
        pytest.skip("SpanScore custom op library unavailable")
    model = attach_span_scorer(encoder, width, use_custom_op=fused)
    onnx.checker.check_model(model)
    assert [o.name for o in model.graph.output] == ["spans", "scores"]
    assert [i.name for i in model.graph.input] == ["hidden", "span_mask", "threshold"]
    assert len(encoder.graph.output) == 4  # the input model is left untouched
    return session(model, lib).run(None, {"hidden": hidden, "span_mask": mask,
                                          "threshold": np.array(threshold, np.float32)})


@pytest.mark.parametrize("fused", [False, True], ids=["fallback", "fused"])
def test_attach_span_scorer_one_slot_encoder(fused):
    """The shipped one-slot encoders keep working: same (batch, start, end) spans as before, slot column 0."""
    dim, width, threshold = 8, 5, 0.5
    encoder, w = tiny_encoder(dim)
    rng = np.random.default_rng(5)
    hidden = rng.standard_normal((3, 21, 6)).astype(np.float32)
    mask = (rng.random((3, 21)) < 0.8).astype(np.int64)
    got = attach_and_run(encoder, width, fused, hidden, mask, threshold)
    q, k, sb, eb = encode(w, hidden)
    assert q.ndim == 3 and sb.ndim == 2
    want = span_scores_reference(q, k, sb, eb, mask, threshold, width)
    assert_same(got, want)
    assert len(got[0]) > 0 and (got[0][:, 1] == 0).all()
    # the one-slot definition, written out: (batch, start, end) rows of s(i, j) > threshold
    logits = np.einsum("bid,bjd->bij", apply_rope(q), apply_rope(k)) / np.sqrt(dim) + sb[:, :, None] + eb[:, None, :]
    offset = np.arange(21)[None, :] - np.arange(21)[:, None]
    keep = mask.astype(bool)[:, :, None] & mask.astype(bool)[:, None, :] & (offset >= 0) & (offset < width)
    np.testing.assert_array_equal(got[0][:, [0, 2, 3]], np.argwhere(keep & (logits > threshold)))

    empty = attach_and_run(encoder, width, fused, hidden[:0], mask[:0], threshold)  # empty batch
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


@pytest.mark.parametrize("fused", [False, True], ids=["fallback", "fused"])
def test_attach_span_scorer_slot_encoder(fused):
    dim, slots, width, threshold = 8, 3, 5, 0.5
    encoder, w = tiny_encoder(dim, slots)
    rng = np.random.default_rng(6)
    hidden = rng.standard_normal((2, 19, 6)).astype(np.float32)
    mask = (rng.random((2, 19)) < 0.8).astype(np.int64)
    got = attach_and_run(encoder, width, fused, hidden, mask, threshold)
    want = span_scores_reference(*encode(w, hidden, slots), mask, threshold, width)
    assert set(np.unique(want[0][:, 1])) == set(range(slots))
    assert_same(got, want)
    empty = attach_and_run(encoder, width, fused, hidden[:0], mask[:0], threshold)
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


def test_attach_span_scorer_before_opset_13():
    """The fused op also serves old encoders: the one-slot Unsqueeze takes its axes as an attribute."""
    lib = custom_op_library()
    if lib is None:
        pytest.skip("SpanScore custom op library unavailable")
    encoder, w = tiny_encoder(8, opset=11)
    rng = np.random.default_rng(8)
    hidden = rng.standard_normal((2, 15, 6)).astype(np.float32)
    mask = np.ones((2, 15), np.int64)
    got = attach_and_run(encoder, 4, True, hidden, mask, 0.0)
    assert_same(got, span_scores_reference(*encode(w, hidden), mask, 0.0, 4))
    with pytest.raises(ValueError, match="opset >= 13"):
        attach_span_scorer(encoder, 4, use_custom_op=False)


def test_attach_rejects_encoder_without_outputs():
    encoder, _ = tiny_encoder(4)
    del encoder.graph.output[1]  # drop k
    with pytest.raises(ValueError, match="lacks outputs"):
        attach_span_scorer(encoder, 4, use_custom_op=False)
    encoder, _ = tiny_encoder(4)
    encoder.graph.input.append(helper.make_tensor_value_info("threshold", TensorProto.FLOAT, []))
    with pytest.raises(ValueError, match="already defines"):
        attach_span_scorer(encoder, 4, use_custom_op=False)


def test_attach_needs_the_rank_of_q():
    encoder, _ = tiny_encoder(4)
    del encoder.graph.output[0].type.tensor_type.shape.dim[0]  # q declared [L, D]
    with pytest.raises(ValueError, match="rank-3 shape .* got rank 2"):
        attach_span_scorer(encoder, 4, use_custom_op=False)
    encoder.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ValueError, match="got no shape"):
        attach_span_scorer(encoder, 4, use_custom_op=True)


def test_models_are_valid_onnx():
    for fused in (False, True):
        model = span_scorer_model(16, 8, use_custom_op=fused)
        onnx.checker.check_model(model, full_check=not fused)
        assert [i.name for i in model.graph.input] == ["q", "k", "start_bias", "end_bias", "span_mask", "threshold"]
        assert [len(i.type.tensor_type.shape.dim) for i in model.graph.input] == [4, 3, 3, 3, 2, 0]
        assert [o.name for o in model.graph.output] == ["spans", "scores"]
        assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4
        if fused:
            (node,) = model.graph.node
            assert (node.domain, node.op_type) == ("hugie", "SpanScore")
            assert [a.name for a in node.attribute] == ["max_width"]  # the threshold is an input
    fallback_ops = {n.op_type for n in span_scorer_model(16, 8, use_custom_op=False).graph.node}
    assert "MatMul" not in fallback_ops and "Einsum" not in fallback_ops  # nothing dense over L x L


# ---------------------------------------------------------------------------------------------
# build


def reset_lookup(monkeypatch):
    monkeypatch.setattr(build, "_resolved", {})  # look again, and log again
    monkeypatch.setattr(build, "_logged", set())


def test_load_finds_the_built_library_and_logs_once(library, caplog, monkeypatch):
    import logging

    assert Path(library).is_file() and Path(library) == build.default_library_path()
    reset_lookup(monkeypatch)
    monkeypatch.delenv("HUGIE_SPAN_SCORE_LIB", raising=False)
    monkeypatch.delenv("HUGIE_DISABLE_CUSTOM_OP", raising=False)
    caplog.set_level(logging.INFO, logger="hugie.kernels")
    assert custom_op_library() == library == custom_op_library()
    assert [r.getMessage() for r in caplog.records] == [f"SpanScore: using fused custom op {library}"]
    assert str(build_library()) == library, "an up-to-date library is not rebuilt"

    reset_lookup(monkeypatch)
    monkeypatch.setenv("HUGIE_DISABLE_CUSTOM_OP", "1")
    assert custom_op_library() is None


def test_not_built_means_fallback_with_one_log_line(monkeypatch, tmp_path, caplog):
    import logging

    reset_lookup(monkeypatch)
    monkeypatch.setenv("HUGIE_CACHE", str(tmp_path))
    monkeypatch.delenv("HUGIE_SPAN_SCORE_LIB", raising=False)
    monkeypatch.delenv("HUGIE_DISABLE_CUSTOM_OP", raising=False)
    caplog.set_level(logging.DEBUG, logger="hugie.kernels")
    assert build.custom_op_library() is None and build.custom_op_library() is None
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert "not built" in record.getMessage() and "hugie kernels build" in record.getMessage()
    assert "fallback" in record.getMessage()
    assert not (tmp_path / "kernels").exists(), "looking must not create anything"


def test_library_named_by_env_var(library, monkeypatch, tmp_path, caplog):
    import logging

    reset_lookup(monkeypatch)
    monkeypatch.setenv("HUGIE_CACHE", str(tmp_path))  # nothing in the cache
    monkeypatch.setenv("HUGIE_SPAN_SCORE_LIB", library)
    assert custom_op_library() == library

    caplog.set_level(logging.INFO, logger="hugie.kernels")
    for bad in (tmp_path / "missing.so", tmp_path / "garbage.so"):
        reset_lookup(monkeypatch)
        (tmp_path / "garbage.so").write_bytes(b"not a shared library")
        monkeypatch.setenv("HUGIE_SPAN_SCORE_LIB", str(bad))
        assert custom_op_library() is None
        assert caplog.records[-1].levelno == logging.WARNING and str(bad) in caplog.records[-1].getMessage()


def test_build_library_says_why_it_cannot_build(monkeypatch, tmp_path):
    monkeypatch.setenv("HUGIE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HUGIE_ORT_INCLUDE", raising=False)
    monkeypatch.setattr(build, "system_header_dirs", list)

    def no_download(root):
        raise AssertionError("headers must be downloaded only when asked to")

    monkeypatch.setattr(build, "_fetch_debian_headers", no_download)
    with pytest.raises(HugieError) as info:
        build_library(tmp_path / "out")
    assert info.value.code == "E050" and "--fetch-headers" in info.value.details["reason"]
    with pytest.raises(HugieError, match="E050") as info:
        build_library(tmp_path / "out", include=tmp_path)
    assert "lacks one of onnxruntime_c_api.h" in info.value.details["reason"]
    monkeypatch.setattr(build, "_find_cxx", lambda: None)
    with pytest.raises(HugieError) as info:
        build_library(tmp_path / "out")
    assert "no C++ compiler" in info.value.details["reason"]
    assert not (tmp_path / "out" / build.LIBRARY_NAME).exists()


def test_build_library_into_a_directory(library, tmp_path, monkeypatch):
    """An explicit output directory (a Docker build stage's), then found through HUGIE_SPAN_SCORE_LIB."""
    built = build_library(tmp_path / "lib", cuda=False)
    assert built == tmp_path / "lib" / build.LIBRARY_NAME and not library_has_cuda(built)
    assert build._built_info(built)["key"] == build.library_key()
    reset_lookup(monkeypatch)
    monkeypatch.setenv("HUGIE_SPAN_SCORE_LIB", str(built))
    assert custom_op_library() == str(built)


def test_debian_source_parsing(tmp_path):
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
        "Components: main\nSigned-By: /keys/debian.gpg\n"
    )
    assert build._debian_source(tmp_path) == ("http://mirror.example/debian", "/keys/debian.gpg")
    (parts / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n")
    assert build._debian_source(tmp_path) == ("http://m.example/debian", "/k.gpg")


def test_library_has_cuda_when_nvcc_present(library):
    if build._find_nvcc() is None:
        pytest.skip("nvcc not found")
    assert library_has_cuda(library)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_source_compiles(tmp_path):
    cmd = ["nvcc", "-std=c++17", "-Xcompiler", "-fPIC", "-gencode=arch=compute_75,code=compute_75",
           "-c", str(KERNEL_DIR / "span_score_cuda.cu"), "-o", str(tmp_path / "span_score_cuda.o")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "span_score_cuda.o").stat().st_size > 0


class CudaWork(ctypes.Structure):
    """ctypes mirror of HugieSpanScoreCudaWork (span_score_cuda.h)."""

    _fields_ = [(name, ctypes.c_void_p) for name in
                ("scratch", "qr", "kr", "offsets", "start_bias", "end_bias", "mask")] + [
        ("batch", ctypes.c_int64), ("slots", ctypes.c_int64), ("length", ctypes.c_int64), ("dim", ctypes.c_int64),
        ("width", ctypes.c_int64), ("threshold", ctypes.c_void_p), ("total", ctypes.c_longlong)]


@pytest.fixture(scope="module")
def cuda_kernels(tmp_path_factory):
    """The CUDA kernels alone, built with nvcc into a plain shared library, for a device test without ORT."""
    torch = pytest.importorskip("torch")
    nvcc = build._find_nvcc()
    if nvcc is None or not torch.cuda.is_available():
        pytest.skip("needs nvcc and a CUDA device")
    target = tmp_path_factory.mktemp("cuda") / "libspan_score_cuda.so"
    cmd = [nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared", *build._cuda_gencode(nvcc),
           str(KERNEL_DIR / "span_score_cuda.cu"), "-o", str(target)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lib = ctypes.CDLL(str(target))
    lib.hugie_span_score_cuda_count.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(CudaWork)]
    lib.hugie_span_score_cuda_fill.argtypes = [ctypes.POINTER(CudaWork), ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_void_p]
    lib.hugie_span_score_cuda_release.argtypes = [ctypes.POINTER(CudaWork), ctypes.c_void_p]
    lib.hugie_span_score_cuda_error_string.restype = ctypes.c_char_p
    return lib, torch


@pytest.mark.gpu
def test_cuda_kernels_match_reference_on_the_device(cuda_kernels):
    """count -> allocate N rows -> fill -> release on one stream, every case, against the NumPy reference."""
    lib, torch = cuda_kernels

    def check(code):
        assert code == 0, lib.hugie_span_score_cuda_error_string(code).decode()

    stream = torch.cuda.Stream()
    inputs = {name: case_inputs(name) for name in sorted(CASES)}
    inputs.update({f"ties_K{slots}": tie_inputs(slots)[:3] for slots in (1, 3)})
    for name, (x, threshold, width) in inputs.items():
        batch, slots, length, dim = x["q"].shape
        with torch.cuda.stream(stream):
            dev = {key: torch.from_numpy(value).cuda() for key, value in feeds(x, threshold).items()}
            work = CudaWork()
            check(lib.hugie_span_score_cuda_count(
                dev["q"].data_ptr(), dev["k"].data_ptr(), dev["start_bias"].data_ptr(), dev["end_bias"].data_ptr(),
                dev["span_mask"].data_ptr(), batch, slots, length, dim, dev["threshold"].data_ptr(), width,
                stream.cuda_stream, ctypes.byref(work)))
            spans = torch.empty((work.total, 4), dtype=torch.int64, device="cuda")
            scores = torch.empty((work.total,), dtype=torch.float32, device="cuda")
            check(lib.hugie_span_score_cuda_fill(ctypes.byref(work), spans.data_ptr(), scores.data_ptr(),
                                                 stream.cuda_stream))
            check(lib.hugie_span_score_cuda_release(ctypes.byref(work), stream.cuda_stream))
        stream.synchronize()
        ref = reference(x, threshold, width)
        try:
            assert_same((spans.cpu().numpy(), scores.cpu().numpy()), ref)
        except AssertionError as exc:
            raise AssertionError(f"case {name}: {exc}") from exc


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="CUDAExecutionProvider not available"
)
def test_cuda_kernel_matches_reference(library):
    if not library_has_cuda(library):
        pytest.skip("library built without the CUDA kernel")
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(library)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # SpanScore must run on CUDA
    names = ("L1", "all_masked", "W_ge_L", "everything_above", "batch64", "D2", "D64", "long_rows", "slots10",
             "B0", "K0", "rand3")
    for name in names:
        x, threshold, width = case_inputs(name)
        model = span_scorer_model(x["q"].shape[-1], width, use_custom_op=True)
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
        assert_same(sess.run(None, feeds(x, threshold)), reference(x, threshold, width))
