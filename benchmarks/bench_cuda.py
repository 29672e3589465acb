"""One exported model on the CUDA execution provider vs the CPU one: latency, throughput, same spans.

Needs onnxruntime-gpu and a GPU; export with ``--quantize fp16`` for CUDA (or ``none``):

    hugie export MODEL_DIR -o DIR --quantize fp16
    python benchmarks/bench_cuda.py --model DIR [--requests 100] [--batch 64] [--slots 1]

Both engines run the same graph and the same Extractor; the CPU engine uses every core. A request
asks for K entity types in the benchmark text (``--slots K``, default 1; K = 10 is reported too): K
passes for a one-slot model, one row of K prompt slots for a slot model. Spans are compared on the
benchmark text plus a few fixed sentences (fp16 on two providers may flip a span whose score sits at
the threshold; the count of differing spans is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_latency import TEXT, pct, timed

SENTENCES = [
    "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
    "《雅典娜女神》是由李安执导的电影，2001年在北京上映。",
    "EU rejects German call to boycott British lamb.",
    "张三和李四昨天在上海参加了阿里巴巴的发布会。",
]
INSTRUCTIONS = ["找到文章中所有【人名】类型的实体？", "找到文章中所有【公司】类型的实体？",
                "找到文章中所有【地址】类型的实体？", "Find all entities of type [person]."]
ENTITY_TYPES = ["人名", "公司", "地址", "组织机构", "职位", "时间", "产品", "政府", "书名", "游戏"]


def entity_types(k: int) -> list[str]:
    return [ENTITY_TYPES[n] if n < len(ENTITY_TYPES) else f"类型{n}" for n in range(k)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="exported ONNX directory (fp16 or fp32)")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="requests per batched call")
    ap.add_argument("--slots", type=int, default=1, help="entity types K per request (K = 10 is reported too)")
    args = ap.parse_args()

    import onnxruntime

    from hugie.extractor import Extractor
    from hugie.types import request_dict

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
        for k in sorted({args.slots, 10}):
            types = entity_types(k)  # K = 1: 人名, the instruction of earlier runs
            lat = timed(lambda ex=ex, types=types: ex.extract_entities(TEXT, types), args.requests, warmup=10)
            batch = [request_dict(text=TEXT, entities=types)] * args.batch
            ex.run(batch)
            start = time.perf_counter()
            ex.run(batch)
            rows[device, k] = (statistics.median(lat), pct(lat, 99), args.batch / (time.perf_counter() - start))

    quantize = engines["cuda"].info().get("quantize")
    print(f"\nmodel {args.model} ({quantize}), onnxruntime {onnxruntime.__version__}, single request = "
          f"K entity types + {len(TEXT)}-character text\n")
    print("| provider | K types | p50 ms | p99 ms | batched requests/s | CPU p50 / this p50 |")
    print("|---|---:|---:|---:|---:|---:|")
    for (device, k), (p50, p99, throughput) in rows.items():
        print(f"| {device} | {k} | {p50:.2f} | {p99:.2f} | {throughput:.0f} | {rows['cpu', k][0] / p50:.1f}× |")
    print(f"\nspans: {total} on CPU over {len(pairs)} passes, {differing} differ on CUDA")


if __name__ == "__main__":
    main()
