"""Precision/recall/F1 at several span thresholds from one pass (spans kept at the lowest).

Chooses the threshold on a dev set and compares models (e.g. int8 vs fp32) on the same records;
``--reference`` also reports how often a model's spans agree with a reference model's.
``--task re`` sweeps the relation-object threshold instead (subjects at the model's threshold),
the value a model's ``relation_threshold`` is chosen from.

Usage:
  python benchmarks/threshold_sweep.py --model int8=DIR --model fp32=DIR --data DEV.jsonl \
      [--label-map MAP.json] [--skip 0] [--limit 300] [--thresholds 0.3,0.4,0.5,0.6,0.7] [--reference fp32]
  python benchmarks/threshold_sweep.py --task re --model int8=DIR --data DEV.jsonl [--skip N] [--limit N]
"""

from __future__ import annotations

import argparse
import json

from hugie.data import apply_label_map, load_label_map, read_jsonl
from hugie.evaluation import gold_predicates, predict_relations, prf, score_relations
from hugie.extractor import Extractor, decode_entities
from hugie.types import Span


def predict(extractor: Extractor, records, types, threshold: float) -> set:
    """Every record's spans of every type at ``threshold``, undecoded, as ``extract_entities`` asks them (all types
    of a text in one pass on a slot model, one pass per type on a one-slot model)."""
    requests = [{"text": rec.text, "entities": types, "threshold": threshold, "one_type_per_span": False,
                 "flat_ner": False} for rec in records]
    return {(idx, s.start, s.end, t, s.score) for idx, result in enumerate(extractor.run(requests))
            for t, spans in result.entities.items() for s in spans}


def decoded(spans: set, threshold: float, *, flat: bool, one_type: bool) -> set:
    """``(record, start, end, type)`` kept at ``threshold`` by the library's entity decoding."""
    by_record: dict = {}
    for idx, start, end, t, score in spans:
        if score >= threshold:
            by_record.setdefault(idx, {}).setdefault(t, []).append(Span(text="", start=start, end=end, score=score))
    return {(idx, s.start, s.end, t) for idx, by_type in by_record.items()
            for t, kept in decode_entities(by_type, flat=flat, one_type=one_type).items() for s in kept}


def sweep_relations(args, records, thresholds: list[float]) -> None:
    """Relation triples F1 per object threshold; subjects at each model's own threshold."""
    schema = gold_predicates(records)
    report = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        found, _ = predict_relations(Extractor.load(path), records, schema, relation_threshold=thresholds[0])
        rows = {thr: score_relations([k for k, v in found.items() if v >= thr], records) for thr in thresholds}
        best = max(rows, key=lambda t: rows[t]["f1"])
        report[name] = best
        print(f"\n{name}: {len(records)} records, relation triples; best object threshold {best}")
        print("| relation threshold | P | R | F1 | tp / predicted / gold |")
        for thr, r in rows.items():
            counts = f"{r['tp']} / {r['predicted']} / {r['gold']}"
            print(f"| {thr} | {r['precision']} | {r['recall']} | {r['f1']} | {counts} |")
    print(json.dumps(report))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--label-map", default=None)
    ap.add_argument("--skip", type=int, default=0, help="start after the first N records (e.g. the ones a report uses)")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8")
    ap.add_argument("--reference", default=None, help="model NAME whose spans the others are compared with")
    ap.add_argument("--task", choices=["ner", "re"], default="ner")
    args = ap.parse_args()
    thresholds = sorted(float(x) for x in args.thresholds.split(","))
    mapping = load_label_map(args.label_map) if args.label_map else None
    records = [apply_label_map(r, mapping) if mapping else r for r in read_jsonl(args.data)]
    records = records[args.skip: args.skip + args.limit]
    if args.task == "re":
        return sweep_relations(args, records, thresholds)
    types = sorted({e.type for r in records for e in r.entities})
    gold = {(idx, e.start, e.end, e.type) for idx, r in enumerate(records) for e in r.entities}
    found = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        found[name] = predict(Extractor.load(path), records, types, thresholds[0])
    report = {}
    for name, spans in found.items():
        rows = {}
        for thr in thresholds:
            pred = decoded(spans, thr, flat=False, one_type=False)
            rows[thr] = prf(len(pred & gold), len(pred), len(gold))
            for key, flat, one_type in (("one_type_f1", False, True), ("flat_f1", True, True)):
                kept = decoded(spans, thr, flat=flat, one_type=one_type)
                rows[thr][key] = prf(len(kept & gold), len(kept), len(gold))["f1"]
            if args.reference and name != args.reference:
                ref = {s[:4] for s in found[args.reference] if s[4] >= thr}
                rows[thr]["agreement_f1"] = prf(len(pred & ref), len(pred), len(ref))["f1"]
        best = max(rows, key=lambda t: rows[t]["f1"])
        report[name] = {"best_threshold": best, "rows": rows}
        print(f"\n{name}: {len(records)} records, {len(types)} types; best threshold {best}")
        print("| threshold | P | R | F1 (every type) | F1 one type per span | F1 flat_ner |"
              + (" agreement F1 |" if args.reference and name != args.reference else ""))
        for thr, r in rows.items():
            extra = f" {r['agreement_f1']} |" if "agreement_f1" in r else ""
            scores = f"{r['precision']} | {r['recall']} | {r['f1']} | {r['one_type_f1']} | {r['flat_f1']}"
            print(f"| {thr} | {scores} |{extra}")
    print(json.dumps({k: v["best_threshold"] for k, v in report.items()}))


if __name__ == "__main__":
    main()
