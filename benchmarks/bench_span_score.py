"""Benchmark span decoding: fused SpanScore op vs the ONNX fallback vs dense NumPy + host decode.

Inputs carry K prompt slots per row (q [B, K, L, D], k [B, L, D], biases [B, K, L]); the table has
rows for ``--slots K`` (default 1, a one-slot model) and for K = 10 (a schema in one row).
Dense baseline: RoPE, full [B, K, L, L] logits (BLAS matmul), then mask / band / threshold /
nonzero on the host. Fused and fallback run in onnxruntime and compute only the band j - i < W.

    PYTHONPATH=. python benchmarks/bench_span_score.py [--threads 2] [--repeats 20] [--slots 1]
    PYTHONPATH=. python benchmarks/bench_span_score.py --device cuda   # onnxruntime-gpu + torch with CUDA

With ``--device cuda`` inputs and outputs stay on the GPU (IO binding; the clock stops once the
outputs are ready), and the dense baseline is PyTorch on the GPU: the full [B, K, L, L] logits, the
same mask, then ``nonzero`` and a copy of the spans to the host.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

from hugie.kernels import custom_op_library, span_scorer_model
from hugie.scoring import rope_tables

DIM = 64
THRESHOLD = 3.0  # logit; leaves a few percent of band entries, like a trained span model


def dense_numpy(x, threshold, width):
    q, k = x["q"], x["k"]
    _, length, dim = k.shape
    cos, sin = rope_tables(length, dim)

    def rope(v):
        rot = np.empty_like(v)
        rot[..., 0::2] = -v[..., 1::2]
        rot[..., 1::2] = v[..., 0::2]
        return v * cos + rot * sin

    logits = np.matmul(rope(q), rope(k).transpose(0, 2, 1)[:, None]) * np.float32(1 / np.sqrt(dim))  # [B, K, L, L]
    logits += x["start_bias"][..., :, None]
    logits += x["end_bias"][..., None, :]
    valid = x["span_mask"].astype(bool)
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    keep = (offset >= 0) & (offset < width)
    keep = keep & valid[:, None, :, None] & valid[:, None, None, :] & (logits > threshold)
    b, s, i, j = np.nonzero(keep)
    return np.stack([b, s, i, j], axis=1).astype(np.int64), logits[b, s, i, j]


def dense_torch_cuda(x, threshold, width):
    import torch

    from hugie.modeling import rope

    dev = {key: torch.from_numpy(value).cuda() for key, value in x.items()}
    length, dim = x["k"].shape[1], x["k"].shape[2]
    offset = torch.arange(length, device="cuda")[None, :] - torch.arange(length, device="cuda")[:, None]
    band = (offset >= 0) & (offset < width)

    def run():
        logits = torch.matmul(rope(dev["q"]), rope(dev["k"]).transpose(1, 2)[:, None]) / dim ** 0.5
        logits = logits + dev["start_bias"][..., :, None] + dev["end_bias"][..., None, :]
        valid = dev["span_mask"].bool()
        keep = band & valid[:, None, :, None] & valid[:, None, None, :] & (logits > threshold)
        spans = keep.nonzero()
        return spans.cpu().numpy(), logits[keep].cpu().numpy()

    return run


def cuda_runner(sess, x):
    """IO-bound run on the GPU: inputs uploaded once, outputs left on the device until synchronised."""
    binding = sess.io_binding()
    for name, value in x.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, "cuda")

    def run():
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return [value.numpy() for value in binding.get_outputs()]

    return run


def timed(fn, repeats):
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples)) * 1e3, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--slots", type=int, default=1, help="prompt slots K per row (K = 10 is reported too)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        parser.error("--device cuda needs onnxruntime-gpu with the CUDAExecutionProvider")
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]

    library = custom_op_library()  # built by `hugie kernels build`; without it only the fallback graph runs
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    if library:
        opts.register_custom_ops_library(library)
    rng = np.random.default_rng(0)

    rows = []
    for slots in sorted({args.slots, 10}):
        for length, width in ((n, w) for n in (128, 512) for w in (32, 64)):
            x = {
                "q": rng.standard_normal((args.batch, slots, length, DIM), dtype=np.float32),
                "k": rng.standard_normal((args.batch, length, DIM), dtype=np.float32),
                "start_bias": rng.standard_normal((args.batch, slots, length), dtype=np.float32),
                "end_bias": rng.standard_normal((args.batch, slots, length), dtype=np.float32),
                "span_mask": (rng.random((args.batch, length)) < 0.9).astype(np.int64),
            }
            dense = dense_torch_cuda(x, THRESHOLD, width) if cuda else (
                lambda x=x, width=width: dense_numpy(x, THRESHOLD, width))
            dense_ms, (ref_spans, _) = timed(dense, args.repeats)
            sessions = {}
            for fused in ([True] if library else []) + [False]:
                model = span_scorer_model(DIM, width, use_custom_op=fused)
                sessions[fused] = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
            res = {}
            feeds = {**x, "threshold": np.array(THRESHOLD, np.float32)}
            for fused, sess in sessions.items():
                run = cuda_runner(sess, feeds) if cuda else (lambda sess=sess, feeds=feeds: sess.run(None, feeds))
                res[fused], (spans, _) = timed(run, args.repeats)
                # float32 dense logits may flip a rare near-threshold entry; anything more is a bug
                assert abs(len(spans) - len(ref_spans)) <= max(3, 1e-4 * len(ref_spans)), "span counts differ"
            fused_ms = res.get(True, float("nan"))
            rows.append((slots, length, width, len(ref_spans), dense_ms, res[False], fused_ms))

    where = "CUDA (IO binding)" if cuda else f"CPU, {args.threads} intra-op threads"
    print(f"B={args.batch}, D={DIM}, threshold={THRESHOLD}, onnxruntime {ort.__version__} {where}, "
          f"median of {args.repeats}\n")
    dense_name = "dense PyTorch CUDA + nonzero" if cuda else "dense NumPy + decode"
    print(f"| K | L | W | spans | {dense_name} (ms) | ONNX fallback (ms) | fused SpanScore (ms) "
          "| dense / fused | fallback / fused |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for slots, length, width, n, dense_ms, fallback_ms, fused_ms in rows:
        print(f"| {slots} | {length} | {width} | {n} | {dense_ms:.2f} | {fallback_ms:.2f} | {fused_ms:.2f} "
              f"| {dense_ms / fused_ms:.1f}x | {fallback_ms / fused_ms:.1f}x |")


if __name__ == "__main__":
    main()
