"""What the slot head and span scoring cost next to the encoder: the same rows scored with 1 and with K slots.

Each row is ``<s> [E] w1 … [E] wK </s> TEXT </s>`` with K = 16 types over a CLUENER dev text (~50 characters). The
input tokens are identical in both runs; only the slots read out differ (all K markers, or the first alone), so the
difference is the head's per-slot work (gates, biases, span scoring and decoding) at K against K = 1. Usage:

  python benchmarks/bench_slot_head.py --model SLOT_MODEL_DIR [--batch 1,8] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench_latency import timed
from bench_slots import DATA, texts_near

from hugie.extractor import Extractor
from hugie.prompts import ENTITY, Prompt
from hugie.scoring import logit

TYPES = ["地址", "书名", "公司", "游戏", "政府", "电影", "人名", "组织机构", "职位", "景点",
         "时间", "产品", "品牌", "事件", "作品", "学校"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    ex = Extractor.load(Path(args.model).expanduser())
    if ex.prompts is None:
        raise SystemExit(f"{args.model} is a one-slot model: nothing to compare")
    texts = texts_near(Path(DATA) / "cluener" / "dev.jsonl", 8)
    prompt, markers = ex.prompts.encode(Prompt(ENTITY, tuple(TYPES)))
    threshold = logit(ex.config.threshold)
    print(f"{getattr(ex.backend, 'scorer', ex.backend.name)}; K = {len(TYPES)} types, prompt {len(prompt)} tokens")
    print("| batch | tokens / row | K = 1 (ms) | K = 16 (ms) | head cost at K = 16 |")
    print("|---:|---:|---:|---:|---:|")
    for batch_size in (int(b) for b in args.batch.split(",")):
        pairs = [(prompt, t) for t in ex.tokenizer.tokenize(texts[:batch_size])]
        timings = {}
        for k in (1, len(TYPES)):
            batch = ex.tokenizer.build_batch(pairs, markers=[markers[:k]] * len(pairs))
            score = lambda b=batch: ex.backend.score(b, threshold, ex.config.max_span_width)  # noqa: E731
            timings[k] = statistics.median(timed(score, args.repeats, warmup=1))
        one, many = timings[1], timings[len(TYPES)]
        print(f"| {batch_size} | {len(prompt) + len(pairs[0][1]) + 3} | {one:.2f} | {many:.2f} | "
              f"+{(many - one) / one * 100:.0f} % |")


if __name__ == "__main__":
    main()
