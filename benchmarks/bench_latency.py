"""End-to-end latency and throughput, side by side in one run, reported as ratios.

* HugIE's recipe as the baseline: a BERT with chinese-macbert-large dimensions (24 layers, hidden
  1024, 16 heads, ffn 4096, vocab 21128), random weights, every input padded to 512, dense L×L
  Efficient Global Pointer, sigmoid then top-50 over the flattened matrix, PyTorch eager fp32.
* hugie: torch eager, ORT fp32, ORT int8 — instruction + text in, spans out (Extractor.extract).
* int8 vs fp32 F1 on a dev subset (accuracy cost of quantization).

Usage:
  python benchmarks/bench_latency.py --model MODEL_DIR [--requests 40] [--f1-data DEV.jsonl --label-map F]
      [--also NAME=EXPORTED_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TEXT = ("浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。叶老桂认为，对目前国内商业银行而言，"
        "在选择企业客户时，要综合考虑企业的信用状况、发展前景以及还款能力。他说，北京和上海的几家银行已经开始尝试新的"
        "评估体系，这对整个行业都有借鉴意义。")
INSTRUCTION = "找到文章中所有【人名】类型的实体？"


class HugIERecipe(torch.nn.Module):
    """BERT-large dims + dense Efficient Global Pointer over a 512-padded input."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=21128, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096, max_position_embeddings=512)
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.dense1 = torch.nn.Linear(1024, 128)
        self.dense2 = torch.nn.Linear(128, 2)

    @torch.inference_mode()
    def forward(self, ids, mask):
        from hugie.modeling import rope

        h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        p = self.dense1(h)
        q, k = rope(p[..., ::2]), rope(p[..., 1::2])
        logits = torch.einsum("bmd,bnd->bmn", q, k) / 8.0
        bias = self.dense2(p) / 2
        logits = logits + bias[..., :1] + bias[..., 1:].transpose(1, 2)
        valid = (mask[:, :, None] * mask[:, None, :]).bool() & torch.ones_like(logits, dtype=torch.bool).triu()
        logits = logits.masked_fill(~valid, -1e12)
        probs = torch.sigmoid(logits).flatten(1)
        return torch.topk(probs, 50, dim=-1)


def hugie_recipe_request(model, n_tokens: int) -> None:
    ids = torch.zeros((1, 512), dtype=torch.long)
    mask = torch.zeros((1, 512), dtype=torch.long)
    ids[0, :n_tokens] = torch.randint(100, 21000, (n_tokens,))
    mask[0, :n_tokens] = 1
    model(ids, mask)


def timed(fn, n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(xs, q):
    return float(np.percentile(xs, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="trained model dir, or an exported one (its weights dequantized)")
    ap.add_argument("--requests", type=int, default=80, help="single requests per engine, in rounds of 10")
    ap.add_argument("--baseline-requests", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="passes per batched call")
    ap.add_argument("--f1-data", default=None)
    ap.add_argument("--label-map", default=None)
    ap.add_argument("--f1-limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--also", action="append", default=[], metavar="NAME=DIR",
                    help="another exported ONNX directory to time beside the others (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from hugie.export import export_model, torch_model_dir
    from hugie.extractor import Extractor

    tmp = Path(tempfile.mkdtemp(prefix="hugie-bench-"))
    args.model = str(torch_model_dir(args.model, tmp))  # an exported directory: its weights, dequantized
    fp32_dir = export_model(args.model, tmp / "fp32")
    int8_dir = export_model(args.model, tmp / "int8", quantize="int8")
    engines = {
        "torch eager fp32": Extractor.load(args.model, backend="torch", device="cpu"),
        "ORT fp32": Extractor.load(fp32_dir, backend="onnx", device="cpu"),
        "ORT int8": Extractor.load(int8_dir, backend="onnx", device="cpu"),
    }
    for spec in args.also:
        name, _, directory = spec.partition("=")
        engines[f"ORT {name}"] = Extractor.load(directory, backend="onnx", device="cpu")
    n_tokens = engines["ORT int8"].tokenizer.build_batch(
        [tuple(engines["ORT int8"].tokenizer.tokenize([INSTRUCTION, TEXT]))]).input_ids.shape[1]
    rows = {}
    # Engines take turns in rounds, so drifting machine load affects every engine alike.
    latencies = {name: [] for name in engines}
    rounds = max(1, args.requests // 10)
    for ex in engines.values():
        timed(lambda ex=ex: ex.extract(INSTRUCTION, TEXT), 0, warmup=3)
    for _ in range(rounds):
        for name, ex in engines.items():
            latencies[name] += timed(lambda ex=ex: ex.extract(INSTRUCTION, TEXT), args.requests // rounds, warmup=0)
    for name, ex in engines.items():
        lat = latencies[name]
        pairs = [(INSTRUCTION, TEXT)] * args.batch
        t = time.perf_counter()
        ex.extract(pairs)
        thr = args.batch / (time.perf_counter() - t)
        rows[name] = {"p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99), "passes_per_s": thr}

    baseline = HugIERecipe().eval()
    lat = timed(lambda baseline=baseline: hugie_recipe_request(baseline, n_tokens), args.baseline_requests, warmup=1)
    rows["HugIE recipe (BERT-large, pad 512, dense L×L)"] = {"p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99),
                                                           "passes_per_s": 1000 / statistics.median(lat)}
    del baseline

    base = rows["torch eager fp32"]["p50_ms"]
    hug = rows["HugIE recipe (BERT-large, pad 512, dense L×L)"]["p50_ms"]
    print(f"\nsingle request: 1 × {n_tokens} tokens (instruction + text), {args.threads} threads\n")
    print("| engine | p50 ms | p99 ms | batched passes/s | speed-up vs torch eager | speed-up vs HugIE recipe |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['passes_per_s']:.1f} | "
              f"{base / r['p50_ms']:.2f}× | {hug / r['p50_ms']:.1f}× |")

    result = {"tokens": n_tokens, "rows": rows}
    if args.f1_data:
        from hugie.data import apply_label_map, load_label_map, read_jsonl
        from hugie.evaluation import evaluate

        mapping = load_label_map(args.label_map)
        recs = [apply_label_map(r, mapping) for r in read_jsonl(args.f1_data)][: args.f1_limit]
        f1 = {}
        for name in ("ORT fp32", "ORT int8"):
            res = evaluate(engines[name], recs)
            f1[name] = {task: res[task]["f1"] for task in ("ner", "re") if task in res}
        print(f"\nF1 on {args.f1_data} [:{args.f1_limit}]: {json.dumps(f1, ensure_ascii=False)}")
        result["f1"] = f1
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
