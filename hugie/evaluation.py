"""Evaluation through the same Extractor path as serving.

NER: strict micro P/R/F1 on (record, start, end, type), one entity-type request per record over the
file's type set. RE: strict micro P/R/F1 on (record, subject text, predicate, object text), one schema
request per record whose relations come from the gold (subject type → predicates) unless given. Both run
through :meth:`Extractor.run`, batched across records, exactly as a user's requests would.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence

from .data import Record
from .tokenization import char_span_to_tokens
from .types import SchemaResult, request_dict


def prf(tp: int, n_pred: int, n_gold: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(100 * p, 2), "recall": round(100 * r, 2), "f1": round(100 * f, 2),
            "tp": tp, "predicted": n_pred, "gold": n_gold}


def reachable_fraction(tokenizer, records: Sequence[Record], max_width: int) -> float:
    """Share of gold spans that start and end on token boundaries within ``max_width`` tokens."""
    toks = tokenizer.tokenize([r.text for r in records])
    total = ok = 0
    for rec, tt in zip(records, toks):
        spans = {(e.start, e.end) for e in rec.entities}
        spans |= {(x.start, x.end) for rel in rec.relations for x in (rel.subject, rel.object)}
        for s, e in spans:
            total += 1
            m = char_span_to_tokens(tt, s, e)
            ok += m is not None and m[1] - m[0] < max_width
    return round(100 * ok / total, 3) if total else 100.0


def evaluate_ner(extractor, records: Sequence[Record], types: Sequence[str] | None = None,
                 threshold: float | None = None, language: str | None = None,
                 one_type_per_span: bool | None = None, flat_ner: bool | None = None) -> dict:
    """Strict micro P/R/F1 of one entity-type request per record (every type of the file)."""
    flat_ner, one_type_per_span = extractor.entity_decoding(one_type_per_span, flat_ner)
    types = sorted(types or {e.type for r in records for e in r.entities})
    options = request_dict(threshold=threshold, language=language, one_type_per_span=one_type_per_span,
                       flat_ner=flat_ner)
    requests = [{"text": rec.text, "entities": types, **options} for rec in records] if types else []
    start = time.perf_counter()
    stats = {"passes": 0}
    results = extractor.run(requests, stats=stats)
    elapsed = time.perf_counter() - start
    pred = {(idx, s.start, s.end, t) for idx, result in enumerate(results) for t, spans in result.entities.items()
            for s in spans}
    gold = {(idx, e.start, e.end, e.type) for idx, r in enumerate(records) for e in r.entities if e.type in types}
    tp = pred & gold
    out = prf(len(tp), len(pred), len(gold))
    per_type = {}
    for t in types:
        per_type[t] = prf(sum(1 for x in tp if x[3] == t), sum(1 for x in pred if x[3] == t),
                          sum(1 for x in gold if x[3] == t))
    out["per_type"] = per_type
    out["one_type_per_span"] = one_type_per_span
    out["flat_ner"] = flat_ner
    out["passes"] = stats["passes"]
    out["passes_per_second"] = round(out["passes"] / elapsed, 2) if elapsed > 0 else None
    return out


def gold_predicates(records: Sequence[Record]) -> dict[str, list[str]]:
    """subject type → predicates seen in the gold."""
    predicates: dict[str, set] = defaultdict(set)
    for rec in records:
        for rel in rec.relations:
            predicates[rel.subject.type].add(rel.predicate)
    return {k: sorted(v) for k, v in predicates.items()}


def predict_relations(extractor, records: Sequence[Record], predicates: dict[str, list[str]],
                      threshold: float | None = None, relation_threshold: float | None = None,
                      language: str | None = None) -> tuple[dict[tuple[int, str, str, str], float], int]:
    """``({(record index, subject text, predicate, object text): best object score}, passes run)``: one
    schema request per record (relations of ``predicates``: subject type → predicates), as a user sends it."""
    relations = [{"subject": t, "predicate": p} for t in sorted(predicates) for p in predicates[t]]
    options = request_dict(threshold=threshold, relation_threshold=relation_threshold, language=language)
    requests = [{"text": rec.text, "schema": {"relations": relations}, **options} for rec in records]
    stats = {"passes": 0}
    results = extractor.run(requests, stats=stats) if relations else [SchemaResult() for _ in records]
    found: dict[tuple[int, str, str, str], float] = {}
    for idx, result in enumerate(results):
        for r in result.relations:
            key = (idx, r.subject.text, r.predicate, r.object.text)
            found[key] = max(r.object.score, found.get(key, 0.0))
    return found, stats["passes"]


def score_relations(pred, records: Sequence[Record]) -> dict:
    """Strict micro P/R/F1 of predicted (record index, subject, predicate, object) tuples, per predicate too."""
    pred = set(pred)
    gold = {(idx, r.subject.text, r.predicate, r.object.text) for idx, rec in enumerate(records)
            for r in rec.relations}
    tp = pred & gold
    out = prf(len(tp), len(pred), len(gold))
    counts = Counter(x[2] for x in gold)
    out["per_predicate"] = {p: prf(sum(1 for x in tp if x[2] == p), sum(1 for x in pred if x[2] == p), n)
                            for p, n in sorted(counts.items())}
    return out


def evaluate_re(extractor, records: Sequence[Record], predicates: dict[str, list[str]] | None = None,
                threshold: float | None = None, language: str | None = None,
                relation_threshold: float | None = None) -> dict:
    """Strict micro P/R/F1 of relation triples (``predicates``: subject type → predicates; default: the gold's)."""
    predicates = predicates or gold_predicates(records)
    start = time.perf_counter()
    found, passes = predict_relations(extractor, records, predicates, threshold, relation_threshold, language)
    elapsed = time.perf_counter() - start
    out = score_relations(found, records)
    out["relation_threshold"] = extractor.relation_threshold(threshold, relation_threshold)
    out["passes"] = passes
    out["passes_per_second"] = round(out["passes"] / elapsed, 2) if elapsed > 0 else None
    return out


def evaluate(extractor, records: Sequence[Record], *, predicates=None, threshold=None, language=None,
             types=None, one_type_per_span: bool | None = None, flat_ner: bool | None = None,
             relation_threshold: float | None = None) -> dict:
    """``{"ner": {...}, "re": {...}, "reachable": pct, "records": n}`` (a task without gold is omitted)."""
    out: dict = {"records": len(records)}
    if any(r.entities for r in records):
        out["ner"] = evaluate_ner(extractor, records, types=types, threshold=threshold, language=language,
                                  one_type_per_span=one_type_per_span, flat_ner=flat_ner)
    if any(r.relations for r in records):
        out["re"] = evaluate_re(extractor, records, predicates=predicates, threshold=threshold, language=language,
                                relation_threshold=relation_threshold)
    out["reachable"] = reachable_fraction(extractor.tokenizer, records, extractor.config.max_span_width)
    return out
