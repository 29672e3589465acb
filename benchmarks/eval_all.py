"""Evaluate one or more models on every dev set in ../shared/data (markdown table + JSON).

Same path as ``hugie eval`` (Extractor → evaluation). Usage:
  python benchmarks/eval_all.py --model int8=hugie/models/hugie-small --model fp32=/path/to/fp32 [--limit N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hugie.data import apply_label_map, load_label_map, read_jsonl
from hugie.evaluation import evaluate
from hugie.extractor import Extractor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = [  # (name, folder, label map file or None, tasks reported)
    ("CLUENER", "cluener", "label_map_zh.json", ("ner",)),
    ("Weibo", "weibo_ner", "label_map_zh.json", ("ner",)),
    ("People's Daily", "peoples_daily_ner", "label_map_zh.json", ("ner",)),
    ("Chinese literature", "chinese_literature", "label_map_zh.json", ("ner", "re")),
    ("DuIE 1 subset", "duie1_subset", None, ("re",)),
    ("FinRE", "finre", None, ("re",)),
    ("CoNLL-2003", "conll2003", "label_map.json", ("ner",)),
    ("CoNLL04", "conll04", "label_map.json", ("ner", "re")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated folder names")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    results: dict = {}
    for name, folder, lm, tasks in SETS:
        if args.only and folder not in args.only.split(","):
            continue
        path = Path(args.data) / folder / "dev.jsonl"
        mapping = load_label_map(Path(args.data) / folder / lm) if lm else {}
        records = [apply_label_map(r, mapping) for r in read_jsonl(path)]
        if args.limit:
            records = records[: args.limit]
        for mname, mdir in models.items():
            ex = Extractor.load(mdir)
            res = evaluate(ex, records)
            results.setdefault(name, {})[mname] = {t: res[t] for t in tasks if t in res}
            results[name][mname]["records"] = len(records)
            print(name, mname, {t: res[t]["f1"] for t in tasks if t in res}, flush=True)
    header = " | ".join(f"{m} P / R / F1" for m in models)
    print(f"\n| dev set | task | records | {header} |\n|---|---|---:|" + "---:|" * len(models))
    for name, per_model in results.items():
        first = next(iter(per_model.values()))
        for task in ("ner", "re"):
            if task not in first:
                continue
            cells = " | ".join(f"{r[task]['precision']:.1f} / {r[task]['recall']:.1f} / **{r[task]['f1']:.1f}**"
                               for r in per_model.values())
            print(f"| {name} | {task.upper()} | {first['records']} | {cells} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
