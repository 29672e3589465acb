"""One pass per schema against one pass per prompt: latency of two models side by side, as ratios in one run.

Three cases, each on the same texts for both models, rounds interleaved so both see the same machine:
* ``entities``: ``extract_entities`` with CLUENER's 10 types on one CLUENER dev text (~50 characters, CLUENER's
  longest);
* ``schema``: a DuIE-style schema of 5 relations (subject 人物) on one DuIE 1 dev text of ~100 characters;
* ``instruction``: one free-form instruction on the same CLUENER text.
It also reports the encoder passes each model ran per request. Usage:

  python benchmarks/bench_slots.py --model before=~/.cache/hugie/exports/hugie-small-v1 \\
      --model after=hugie/models/hugie-small [--texts 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hugie.data import read_jsonl
from hugie.extractor import Extractor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLUENER_TYPES = ["地址", "书名", "公司", "游戏", "政府", "电影", "人名", "组织机构", "职位", "景点"]
RELATIONS = [{"subject": "人物", "predicate": p} for p in ("出生地", "毕业院校", "妻子", "国籍", "父亲")]
INSTRUCTION = "找到文章中所有【人名】类型的实体？"


def texts_near(path: Path, count: int, length: int = 100) -> list[str]:
    """``count`` texts of ``path`` closest to ``length`` characters."""
    texts = [r.text for r in read_jsonl(path)]
    return sorted(texts, key=lambda t: (abs(len(t) - length), t))[:count]


def timed(fn, items) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable; the first is the baseline)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--texts", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    models = {name: Extractor.load(Path(path).expanduser()) for name, path in (m.split("=", 1) for m in args.model)}
    cluener = texts_near(Path(args.data) / "cluener" / "dev.jsonl", args.texts)
    duie = texts_near(Path(args.data) / "duie1_subset" / "dev.jsonl", args.texts)
    cases = {"entities": cluener, "schema": duie, "instruction": cluener}
    results: dict = {}
    for case, texts in cases.items():
        for name, ex in models.items():  # warm-up, and the passes each request runs
            passes = 0
            for t in texts:
                stats: dict = {}
                ex.run([_request(case, t)], stats=stats)
                passes += stats["passes"]
            results.setdefault(case, {})[name] = {"passes_per_request": passes / len(texts), "ms": []}
        for _ in range(args.rounds):
            for name, ex in models.items():
                results[case][name]["ms"] += timed(lambda t, ex=ex, case=case: ex.run([_request(case, t)]), texts)
    base = next(iter(models))
    print(f"texts: {args.texts} per case (CLUENER dev ~50, DuIE 1 dev ~100 characters), {args.rounds} rounds")
    print("| case | model | passes / request | median ms | p90 ms | speed-up vs " + base + " |")
    print("|---|---|---:|---:|---:|---:|")
    for case, per_model in results.items():
        base_median = statistics.median(per_model[base]["ms"])
        for name, r in per_model.items():
            median = statistics.median(r["ms"])
            p90 = statistics.quantiles(r["ms"], n=10)[-1]
            r.update(median_ms=round(median, 2), p90_ms=round(p90, 2), speedup=round(base_median / median, 2))
            print(f"| {case} | {name} | {r['passes_per_request']:.2f} | {median:.1f} | {p90:.1f} | "
                  f"{base_median / median:.2f}x |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({c: {m: {k: v for k, v in r.items() if k != "ms"}
                                                       for m, r in pm.items()} for c, pm in results.items()},
                                                  indent=2, ensure_ascii=False))


def _request(case: str, text: str) -> dict:
    if case == "entities":
        return {"text": text, "entities": CLUENER_TYPES}
    if case == "schema":
        return {"text": text, "schema": {"relations": RELATIONS}}
    return {"text": text, "instruction": INSTRUCTION}


if __name__ == "__main__":
    main()
