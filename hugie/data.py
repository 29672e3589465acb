"""Unified JSONL records: reader with validation, and converters from common formats.

One record per line::

    {"id": "...", "text": "...",
     "entities": [{"type": "company", "start": 0, "end": 4, "text": "浙商银行"}],
     "relations": [{"subject": {span}, "predicate": "导演", "object": {span}}]}

Offsets are character offsets into ``text``, end exclusive, and ``text[start:end] == span.text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import HugieError
from .tokenization import is_cjk


@dataclass(frozen=True)
class EntitySpan:
    type: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class RelationTriple:
    subject: EntitySpan
    predicate: str
    object: EntitySpan


@dataclass
class Record:
    id: str
    text: str
    entities: list[EntitySpan] = field(default_factory=list)
    relations: list[RelationTriple] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"id": self.id, "text": self.text,
                "entities": [asdict(e) for e in self.entities],
                "relations": [{"subject": asdict(r.subject), "predicate": r.predicate,
                               "object": asdict(r.object)} for r in self.relations]}


# --------------------------------------------------------------------------- reading
def _span(obj, text: str, where: tuple[str, int], name: str, default_type: str = "") -> EntitySpan:
    file, line = where
    if not isinstance(obj, dict):
        raise HugieError("E021", file=file, line=line, field=name, reason="must be an object")
    for key in ("start", "end"):
        if not isinstance(obj.get(key), int) or isinstance(obj.get(key), bool):
            raise HugieError("E021", file=file, line=line, field=f"{name}.{key}", reason="must be an integer")
    start, end = obj["start"], obj["end"]
    if not 0 <= start < end <= len(text):
        raise HugieError("E021", file=file, line=line, field=name,
                         reason=f"has offsets [{start}, {end}) outside the text (length {len(text)}) or empty")
    span_text = obj.get("text", text[start:end])
    if span_text != text[start:end]:
        raise HugieError("E021", file=file, line=line, field=f"{name}.text",
                         reason=f"is {span_text!r} but text[{start}:{end}] is {text[start:end]!r}")
    span_type = obj.get("type", default_type)
    if not isinstance(span_type, str):
        raise HugieError("E021", file=file, line=line, field=f"{name}.type", reason="must be a string")
    return EntitySpan(span_type, start, end, span_text)


def parse_record(obj, file: str = "<input>", line: int = 1) -> Record:
    """Validate one decoded JSON object; errors name the file, line and field."""
    where = (file, line)
    if not isinstance(obj, dict):
        raise HugieError("E023", file=file, line=line, reason="record must be a JSON object")
    text = obj.get("text")
    if not isinstance(text, str):
        raise HugieError("E021", file=file, line=line, field="text", reason="is missing or not a string")
    ents = obj.get("entities", []) or []
    rels = obj.get("relations", []) or []
    if not isinstance(ents, list):
        raise HugieError("E021", file=file, line=line, field="entities", reason="must be a list")
    if not isinstance(rels, list):
        raise HugieError("E021", file=file, line=line, field="relations", reason="must be a list")
    entities = [_span(e, text, where, f"entities[{i}]") for i, e in enumerate(ents)]
    relations = []
    for i, rel in enumerate(rels):
        if not isinstance(rel, dict):
            raise HugieError("E021", file=file, line=line, field=f"relations[{i}]", reason="must be an object")
        pred = rel.get("predicate")
        if not isinstance(pred, str) or not pred:
            raise HugieError("E021", file=file, line=line, field=f"relations[{i}].predicate",
                             reason="is missing or not a string")
        relations.append(RelationTriple(_span(rel.get("subject"), text, where, f"relations[{i}].subject"),
                                        pred, _span(rel.get("object"), text, where, f"relations[{i}].object")))
    rid = obj.get("id", f"{Path(file).stem}-{line}")
    return Record(str(rid), text, entities, relations)


def read_jsonl(path: str | Path) -> Iterator[Record]:
    """Yield validated records; a bad line raises a HugieError naming file, line and field."""
    path = Path(path)
    if not path.exists():
        raise HugieError("E024", file=path)
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HugieError("E020", file=path, line=number, reason=exc.msg) from exc
            yield parse_record(obj, str(path), number)


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    count = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def load_label_map(path: str | Path | None) -> dict[str, str | list[str]]:
    """``{source label: type name}``; a value may also be a list of names, for a label that answers
    several instructions (e.g. a GPE is a ``行政区`` and also a ``地名``)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise HugieError("E024", file=path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(_is_name_or_names(v) for v in data.values()):
        raise HugieError("E025", file=path)
    return data


def _is_name_or_names(value) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


def _names(label_map: dict, label: str) -> list[str]:
    value = label_map.get(label, label)
    return [value] if isinstance(value, str) else list(value)


def apply_label_map(record: Record, label_map: dict[str, str | list[str]]) -> Record:
    """Rename entity types and predicates through ``label_map`` (unknown labels unchanged).

    A label mapped to several names yields one entity (or triple) per name; the arguments of a
    triple take the first name of their type.
    """
    if not label_map:
        return record

    def ren(span: EntitySpan, name: str | None = None) -> EntitySpan:
        return EntitySpan(name or _names(label_map, span.type)[0], span.start, span.end, span.text)

    entities = [ren(e, name) for e in record.entities for name in _names(label_map, e.type)]
    relations = [RelationTriple(ren(r.subject), name, ren(r.object))
                 for r in record.relations for name in _names(label_map, r.predicate)]
    return Record(record.id, record.text, entities, relations)


# --------------------------------------------------------------------------- converters
def _iter_json_lines_or_array(path: Path) -> Iterator[tuple[int, dict]]:
    raw = path.read_text(encoding="utf-8")
    stripped = raw.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise HugieError("E020", file=path, line=exc.lineno, reason=exc.msg) from exc
        yield from enumerate(data, 1)
        return
    for number, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise HugieError("E020", file=path, line=number, reason=exc.msg) from exc


def convert_cluener(path: str | Path) -> Iterator[Record]:
    """CLUENER: ``{"text", "label": {type: {mention: [[start, end_inclusive], ...]}}}``."""
    path = Path(path)
    for number, obj in _iter_json_lines_or_array(path):
        text = obj.get("text")
        if not isinstance(text, str):
            raise HugieError("E021", file=path, line=number, field="text", reason="is missing or not a string")
        entities = []
        for etype, mentions in (obj.get("label") or {}).items():
            for mention, positions in mentions.items():
                for pos in positions:
                    start, end = int(pos[0]), int(pos[1]) + 1
                    if text[start:end] != mention:
                        raise HugieError("E021", file=path, line=number, field=f"label.{etype}.{mention}",
                                         reason=f"offsets {pos} point at {text[start:end]!r}")
                    entities.append(EntitySpan(etype, start, end, mention))
        entities.sort(key=lambda e: (e.start, e.end, e.type))
        yield Record(str(obj.get("id", f"{path.stem}-{number}")), text, entities)


def convert_duie(path: str | Path) -> Iterator[Record]:
    """DuIE SPO lines: ``{"text", "spo_list": [{subject, predicate, object, *_type}]}``.

    Arguments have no offsets upstream; each is located at its first occurrence. A triple whose
    argument is not in the text raises an error naming the line.
    """
    path = Path(path)
    for number, obj in _iter_json_lines_or_array(path):
        text = obj.get("text")
        if not isinstance(text, str):
            raise HugieError("E021", file=path, line=number, field="text", reason="is missing or not a string")
        entities: dict[tuple, EntitySpan] = {}
        relations = []
        for i, spo in enumerate(obj.get("spo_list") or []):
            subj = spo.get("subject")
            stype = spo.get("subject_type", "")
            objs = spo.get("object")
            otypes = spo.get("object_type", "")
            if isinstance(objs, dict):  # DuIE 2.0 complex objects: flatten to predicate_key
                items = [(k, v, otypes.get(k, "") if isinstance(otypes, dict) else otypes) for k, v in objs.items()]
            else:
                items = [("@value", objs, otypes)]
            for key, value, otype in items:
                pred = spo.get("predicate", "") if key == "@value" else f"{spo.get('predicate', '')}_{key}"
                spans = []
                for field_name, mention, mtype in (("subject", subj, stype), ("object", value, otype)):
                    if not isinstance(mention, str) or not mention:
                        raise HugieError("E021", file=path, line=number, field=f"spo_list[{i}].{field_name}",
                                         reason="is missing or empty")
                    at = text.find(mention)
                    if at < 0:
                        raise HugieError("E021", file=path, line=number, field=f"spo_list[{i}].{field_name}",
                                         reason=f"{mention!r} does not occur in the text")
                    span = EntitySpan(mtype or "实体", at, at + len(mention), mention)
                    entities[(span.start, span.end, span.type)] = span
                    spans.append(span)
                relations.append(RelationTriple(spans[0], pred, spans[1]))
        yield Record(str(obj.get("id", f"{path.stem}-{number}")), text,
                     sorted(entities.values(), key=lambda e: (e.start, e.end)), relations)


def _tags_to_spans(tags: list[str], scheme: str) -> list[tuple[int, int, str]]:
    """Token spans (start, end exclusive, type) from BIO / BIOES / BMES tags (IOB1 tolerated)."""
    begin = {"bio": "B", "bioes": "B", "bmes": "B"}[scheme]
    inside = {"bio": ("I",), "bioes": ("I", "E"), "bmes": ("M", "E")}[scheme]
    single = {"bio": (), "bioes": ("S",), "bmes": ("S",)}[scheme]
    end_tags = {"bio": (), "bioes": ("E",), "bmes": ("E",)}[scheme]
    spans, start, cur = [], None, None
    for i, tag in enumerate(tags + ["O"]):
        prefix, _, label = tag.partition("-")
        if not label:
            prefix, label = tag, ""
        if prefix in inside and cur == label and start is not None:
            if prefix in end_tags:
                spans.append((start, i + 1, cur))
                start = cur = None
            continue
        if start is not None:
            spans.append((start, i, cur))
            start = cur = None
        if prefix in single:
            spans.append((i, i + 1, label))
        elif prefix == begin or (prefix in inside and label):  # an I- without B- starts a span
            start, cur = i, label
    return spans


def convert_conll(path: str | Path, scheme: str = "bio", join: str = "auto") -> Iterator[Record]:
    """CoNLL columns: token first, tag last; blank line between sentences; -DOCSTART- skipped.

    ``join``: "space", "none" or "auto" (no separator when tokens are single CJK characters).
    """
    path = Path(path)
    scheme = scheme.lower()
    if scheme not in ("bio", "bioes", "bmes"):
        raise HugieError("E022", file=path, format=scheme, choices="bio, bioes, bmes")
    sentence: list[tuple[str, str]] = []
    first_line = 0
    count = 0

    def flush() -> Record | None:
        nonlocal count
        if not sentence:
            return None
        tokens = [t for t, _ in sentence]
        sep = join
        if join == "auto":
            cjk = sum(1 for t in tokens if len(t) == 1 and is_cjk(t))
            sep = "none" if cjk * 2 >= len(tokens) else "space"
        glue = "" if sep == "none" else " "
        starts, pos = [], 0
        for tok in tokens:
            starts.append(pos)
            pos += len(tok) + len(glue)
        text = glue.join(tokens)
        entities = []
        for s, e, label in _tags_to_spans([t for _, t in sentence], scheme):
            a, b = starts[s], starts[e - 1] + len(tokens[e - 1])
            entities.append(EntitySpan(label, a, b, text[a:b]))
        count += 1
        return Record(f"{path.stem}-{count:06d}", text, entities)

    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                rec = flush()
                if rec:
                    yield rec
                sentence = []
                continue
            cols = line.split()
            if cols[0] == "-DOCSTART-":
                continue
            if len(cols) < 2:
                raise HugieError("E023", file=path, line=number,
                                 reason=f"expected 'token ... tag' columns, got {line!r}")
            if not sentence:
                first_line = number
            sentence.append((cols[0], cols[-1]))
    rec = flush()
    if rec:
        yield rec
    del first_line


CONVERTERS = {"cluener": convert_cluener, "duie": convert_duie, "conll": convert_conll}
