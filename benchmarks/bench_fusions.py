"""onnxruntime CPU kernels: fused SkipLayerNormalization / BiasGelu versus their unfused parts.

The evidence behind ``hugie.backends.onnx.CPU_DISABLED_FUSIONS``: each op runs alone in a session
with graph optimizations off, at e5-small's shapes (1 × 144 tokens, hidden 384, ffn 1536).

Usage:
  python benchmarks/bench_fusions.py [--tokens 144] [--threads 2] [--runs 500]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"


def graph(nodes, inputs, shape, inits) -> bytes:
    vals = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    g = helper.make_graph(nodes, "g", vals, [out], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model.SerializeToString()


def cases(tokens: int, hidden: int, ffn: int):
    rng = np.random.default_rng(0)
    vec = lambda n: rng.standard_normal(n).astype(np.float32)  # noqa: E731
    ln = {"g": vec(hidden), "b": vec(hidden), "bias": vec(hidden)}
    x = {"x": rng.standard_normal((1, tokens, hidden)).astype(np.float32),
         "s": rng.standard_normal((1, tokens, hidden)).astype(np.float32)}
    yield ("SkipLayerNormalization (fused)", graph(
        [helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b", "bias"], ["y"], domain=MS, epsilon=1e-12)],
        ["x", "s"], [1, tokens, hidden], ln), x)
    yield ("Add + Add + LayerNormalization", graph(
        [helper.make_node("Add", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "bias"], ["u"]),
         helper.make_node("LayerNormalization", ["u", "g", "b"], ["y"], axis=-1, epsilon=1e-12)],
        ["x", "s"], [1, tokens, hidden], ln), x)
    h = {"x": rng.standard_normal((1, tokens, ffn)).astype(np.float32)}
    yield ("BiasGelu (fused)", graph([helper.make_node("BiasGelu", ["x", "bias"], ["y"], domain=MS)],
                                     ["x"], [1, tokens, ffn], {"bias": vec(ffn)}), h)
    yield ("Add + Gelu", graph([helper.make_node("Add", ["x", "bias"], ["t"]),
                                helper.make_node("Gelu", ["t"], ["y"], domain=MS)],
                               ["x"], [1, tokens, ffn], {"bias": vec(ffn)}), h)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=144)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=500)
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, 1 × {args.tokens} tokens, {args.threads} threads\n")
    print("| op | median µs |\n|---|---:|")
    for name, model, feeds in cases(args.tokens, 384, 1536):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        for _ in range(50):
            session.run(None, feeds)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - t) * 1e6)
        print(f"| {name} | {statistics.median(times):.1f} |")


if __name__ == "__main__":
    main()
