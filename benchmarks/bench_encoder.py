"""The encoder pass alone, the way issue 3's reference figure was taken, beside hugie's own graphs.

Issue 3 derives its 3× target from "a plain export + dynamic int8 of the encoder alone": e5-small
in PyTorch eager vs a plain ``torch.onnx`` export run by onnxruntime, fp32 and ``quantize_dynamic``
int8, 1 × 100 tokens. This script times exactly those, side by side in one run, next to the graphs
``hugie export`` writes (fused attention, per-channel int8, outlier channels in fp32), so the
ratio of the reference recipe and hugie's are measured on the same machine at the same moment.

Usage:
  python benchmarks/bench_encoder.py --model MODEL_DIR [--tokens 100] [--requests 60]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="trained model dir, or an exported one (its weights dequantized)")
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--requests", type=int, default=60, help="passes per engine, in rounds of 10")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from hugie.export import ENCODER_FILE, _use_eager_attention, export_model, export_onnx, torch_model_dir
    from hugie.modeling import GlobalPointerModel

    tmp = Path(tempfile.mkdtemp(prefix="hugie-bench-encoder-"))
    args.model = str(torch_model_dir(args.model, tmp))  # an exported directory: its weights, dequantized
    model = GlobalPointerModel.from_pretrained(args.model).eval()
    eager_model = GlobalPointerModel.from_pretrained(args.model).eval()
    _use_eager_attention(eager_model)
    plain_fp32 = export_onnx(eager_model, tmp / "plain-fp32.onnx")
    quantize_dynamic(str(plain_fp32), str(tmp / "plain-int8.onnx"), weight_type=QuantType.QInt8)
    hugie_fp32 = export_model(args.model, tmp / "hugie-fp32") / ENCODER_FILE
    hugie_int8 = export_model(args.model, tmp / "hugie-int8", quantize="int8") / ENCODER_FILE

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, model.encoder.config.vocab_size, size=(1, args.tokens)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 0, 2
    mask = np.ones_like(ids)
    feeds = {"input_ids": ids, "attention_mask": mask}
    tids, tmask = torch.from_numpy(ids), torch.from_numpy(mask)

    def torch_pass(gp_model):
        with torch.inference_mode():
            gp_model.project(tids, tmask)

    engines = {"torch eager, SDPA attention (hugie's torch backend)": lambda: torch_pass(model),
               "torch eager, eager attention": lambda: torch_pass(eager_model)}
    for name, path in (("ORT fp32, plain export", plain_fp32), ("ORT int8, plain export + quantize_dynamic",
                                                                tmp / "plain-int8.onnx"),
                       ("ORT fp32, hugie export", hugie_fp32), ("ORT int8, hugie export", hugie_int8)):
        sess = session(path, args.threads)
        engines[name] = lambda sess=sess: sess.run(None, feeds)

    times = {name: [] for name in engines}
    for fn in engines.values():
        for _ in range(3):
            fn()
    for _ in range(max(1, args.requests // 10)):
        for name, fn in engines.items():
            for _ in range(10):
                t = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t) * 1000)

    p50 = {name: statistics.median(xs) for name, xs in times.items()}
    sdpa = p50["torch eager, SDPA attention (hugie's torch backend)"]
    eager = p50["torch eager, eager attention"]
    print(f"\nencoder + span projection, 1 × {args.tokens} tokens, {args.threads} threads\n")
    print("| engine | p50 ms | vs torch SDPA | vs torch eager attention |")
    print("|---|---:|---:|---:|")
    for name, ms in p50.items():
        print(f"| {name} | {ms:.1f} | {sdpa / ms:.2f}× | {eager / ms:.2f}× |")


if __name__ == "__main__":
    main()
