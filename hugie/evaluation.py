"""Evaluation through the same Extractor path as serving.

NER: strict micro P/R/F1 on (record, start, end, type), one instruction per (text, type) over the
file's type set. RE: strict micro P/R/F1 on (record, subject text, predicate, object text), with a
schema derived from the gold (subject type → predicates) unless one is given; subjects come from
entity passes, exactly like :meth:`Extractor.extract_schema`, but batched across records.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Sequence

from .data import Record
from .instructions import detect_language, templates
from .tokenization import char_span_to_tokens


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


def _tmpl(extractor, text: str, language: str | None):
    return templates(language or detect_language(text), extractor.config.instructions)


def evaluate_ner(extractor, records: Sequence[Record], types: Sequence[str] | None = None,
                 threshold: float | None = None, language: str | None = None,
                 one_type_per_span: bool | None = None, flat_ner: bool | None = None) -> dict:
    flat_ner, one_type_per_span = extractor.entity_decoding(one_type_per_span, flat_ner)
    types = sorted(types or {e.type for r in records for e in r.entities})
    pairs, keys = [], []
    for idx, rec in enumerate(records):
        tmpl = _tmpl(extractor, rec.text, language)
        for t in types:
            pairs.append((tmpl.for_entity(t), rec.text))
            keys.append((idx, t))
    start = time.perf_counter()
    answers = extractor.extract(pairs, threshold=threshold) if pairs else []
    elapsed = time.perf_counter() - start
    by_record: dict[int, dict] = defaultdict(dict)
    for (idx, t), spans in zip(keys, answers):
        by_record[idx][t] = spans
    from .extractor import decode_entities  # as Extractor.extract_entities answers

    by_record = {idx: decode_entities(by_type, flat=flat_ner, one_type=one_type_per_span)
                 for idx, by_type in by_record.items()}
    pred = {(idx, s.start, s.end, t) for idx, by_type in by_record.items() for t, spans in by_type.items()
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
    out["passes"] = len(pairs)
    out["passes_per_second"] = round(len(pairs) / elapsed, 2) if elapsed > 0 else None
    return out


def gold_schema(records: Sequence[Record]) -> dict[str, list[str]]:
    """subject type → predicates seen in the gold."""
    schema: dict[str, set] = defaultdict(set)
    for rec in records:
        for rel in rec.relations:
            schema[rel.subject.type].add(rel.predicate)
    return {k: sorted(v) for k, v in schema.items()}


def predict_relations(extractor, records: Sequence[Record], schema: dict[str, list[str]],
                      threshold: float | None = None, relation_threshold: float | None = None,
                      language: str | None = None) -> tuple[dict[tuple[int, str, str, str], float], int]:
    """``({(record index, subject text, predicate, object text): best object score}, passes asked)``:
    subjects from entity passes at ``threshold``, objects at :meth:`Extractor.relation_threshold`."""
    object_threshold = extractor.relation_threshold(threshold, relation_threshold)
    subject_types = sorted(schema)
    pairs, keys = [], []
    for idx, rec in enumerate(records):
        tmpl = _tmpl(extractor, rec.text, language)
        for t in subject_types:
            pairs.append((tmpl.for_entity(t), rec.text))
            keys.append((idx, t))
    subjects = extractor.extract(pairs, threshold=threshold) if pairs else []
    rel_pairs, rel_keys = [], []
    for (idx, stype), spans in zip(keys, subjects):
        tmpl = _tmpl(extractor, records[idx].text, language)
        for subj in sorted({s.text for s in spans}):  # hash order would vary the int8 batches per run
            for pred in schema[stype]:
                rel_pairs.append((tmpl.for_relation(subj, pred), records[idx].text))
                rel_keys.append((idx, subj, pred))
    objects = extractor.extract(rel_pairs, threshold=object_threshold) if rel_pairs else []
    found: dict[tuple[int, str, str, str], float] = {}
    for key, objs in zip(rel_keys, objects):
        for o in objs:
            found[(*key, o.text)] = max(o.score, found.get((*key, o.text), 0.0))
    return found, len(pairs) + len(rel_pairs)


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


def evaluate_re(extractor, records: Sequence[Record], schema: dict[str, list[str]] | None = None,
                threshold: float | None = None, language: str | None = None,
                relation_threshold: float | None = None) -> dict:
    schema = schema or gold_schema(records)
    start = time.perf_counter()
    found, passes = predict_relations(extractor, records, schema, threshold, relation_threshold, language)
    elapsed = time.perf_counter() - start
    out = score_relations(found, records)
    out["relation_threshold"] = extractor.relation_threshold(threshold, relation_threshold)
    out["passes"] = passes
    out["passes_per_second"] = round(out["passes"] / elapsed, 2) if elapsed > 0 else None
    return out


def evaluate(extractor, records: Sequence[Record], *, schema=None, threshold=None, language=None,
             types=None, one_type_per_span: bool | None = None, flat_ner: bool | None = None,
             relation_threshold: float | None = None) -> dict:
    """``{"ner": {...}, "re": {...}, "reachable": pct, "records": n}`` (a task without gold is omitted)."""
    out: dict = {"records": len(records)}
    if any(r.entities for r in records):
        out["ner"] = evaluate_ner(extractor, records, types=types, threshold=threshold, language=language,
                                  one_type_per_span=one_type_per_span, flat_ner=flat_ner)
    if any(r.relations for r in records):
        out["re"] = evaluate_re(extractor, records, schema=schema, threshold=threshold, language=language,
                                relation_threshold=relation_threshold)
    out["reachable"] = reachable_fraction(extractor.tokenizer, records, extractor.config.max_span_width)
    return out
