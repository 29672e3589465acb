"""One exported model on the CUDA execution provider vs the CPU one: latency, throughput, same spans.

Needs onnxruntime-gpu and a GPU; export with ``--quantize fp16`` for CUDA (or ``none``):

    hugie export MODEL_DIR -o DIR --quantize fp16
    python benchmarks/bench_cuda.py --model DIR [--requests 100] [--batch 64]

Both engines run the same graph and the same Extractor; the CPU engine uses every core. Spans are
compared on the benchmark text plus a few fixed sentences (fp16 on two providers may flip a span
whose score sits at the threshold; the count of differing spans is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_latency import INSTRUCTION, TEXT, pct, timed

SENTENCES = [
    "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
    "《雅典娜女神》是由李安执导的电影，2001年在北京上映。",
    "EU rejects German call to boycott British lamb.",
    "张三和李四昨天在上海参加了阿里巴巴的发布会。",
]
INSTRUCTIONS = ["找到文章中所有【人名】类型的实体？", "找到文章中所有【公司】类型的实体？",
                "找到文章中所有【地址】类型的实体？", "Find all entities of type [person]."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="exported ONNX directory (fp16 or fp32)")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="passes per batched call")
    args = ap.parse_args()

    import onnxruntime

    from hugie.extractor import Extractor

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        ap.error("needs onnxruntime-gpu with the CUDAExecutionProvider")
    engines = {device: Extractor.load(args.model, backend="onnx", device=device) for device in ("cuda", "cpu")}
    pairs = [(ins, text) for text in SENTENCES + [TEXT] for ins in INSTRUCTIONS]
    spans = {device: [[(s.start, s.end) for s in found] for found in ex.extract(pairs)]
             for device, ex in engines.items()}
    differing = sum(len(set(a) ^ set(b)) for a, b in zip(spans["cuda"], spans["cpu"]))
    total = sum(len(found) for found in spans["cpu"])

    rows = {}
    for device, ex in engines.items():
        lat = timed(lambda ex=ex: ex.extract(INSTRUCTION, TEXT), args.requests, warmup=10)
        batch = [(INSTRUCTION, TEXT)] * args.batch
        ex.extract(batch)
        start = time.perf_counter()
        ex.extract(batch)
        rows[device] = (statistics.median(lat), pct(lat, 99), args.batch / (time.perf_counter() - start))

    quantize = engines["cuda"].info().get("quantize")
    print(f"\nmodel {args.model} ({quantize}), onnxruntime {onnxruntime.__version__}, single request = "
          f"instruction + {len(TEXT)}-character text\n")
    print("| provider | p50 ms | p99 ms | batched passes/s | CPU p50 / this p50 |")
    print("|---|---:|---:|---:|---:|")
    for device, (p50, p99, throughput) in rows.items():
        print(f"| {device} | {p50:.2f} | {p99:.2f} | {throughput:.0f} | {rows['cpu'][0] / p50:.1f}× |")
    print(f"\nspans: {total} on CPU over {len(pairs)} passes, {differing} differ on CUDA")


if __name__ == "__main__":
    main()
