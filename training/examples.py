"""Multi-task example builder: NER and RE records → (instruction, text, gold spans) examples.

NER: one example per (text, gold type) plus sampled negative types with empty answers.
RE: one example per (text, subject, predicate) → objects, plus sampled negative predicates
(preferring predicates seen with the same subject type, the ones a schema would ask).
Per-dataset sampling weights and label maps; dedupe; deterministic under a seed.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hugie.data import Record, apply_label_map, load_label_map, read_jsonl
from hugie.instructions import InstructionTemplates, templates


@dataclass(frozen=True)
class Example:
    instruction: str
    text: str
    spans: tuple[tuple[int, int], ...]  # gold character spans, end exclusive
    task: str  # "ner" or "re"
    dataset: str


@dataclass
class DatasetSpec:
    """One training source. ``weight`` scales how many of its records an epoch uses."""

    name: str
    path: str
    language: str = "zh"
    label_map: str | None = None
    tasks: tuple[str, ...] = ("ner", "re")
    weight: float = 1.0
    ner_negatives: int = 1
    re_negatives: int = 1
    dev_path: str | None = None
    records: list[Record] = field(default_factory=list, repr=False)

    def load(self) -> DatasetSpec:
        label_map = load_label_map(self.label_map)
        self.records = [apply_label_map(r, label_map) for r in read_jsonl(self.path)]
        return self


def _rng(seed: int, *parts) -> random.Random:
    key = "|".join(str(p) for p in parts).encode()
    return random.Random(seed * 1_000_003 + zlib.crc32(key))


def _sample_records(records: list[Record], weight: float, rng: random.Random) -> list[Record]:
    whole, frac = int(weight), weight - int(weight)
    out = list(records) * whole
    if frac > 0:
        out += rng.sample(records, int(round(frac * len(records))))
    return out


def ner_examples(record: Record, tmpl: InstructionTemplates, all_types: list[str], negatives: int,
                 rng: random.Random, dataset: str) -> list[Example]:
    by_type: dict[str, set] = defaultdict(set)
    for ent in record.entities:
        by_type[ent.type].add((ent.start, ent.end))
    out = [Example(tmpl.for_entity(t), record.text, tuple(sorted(spans)), "ner", dataset)
           for t, spans in sorted(by_type.items())]
    absent = [t for t in all_types if t not in by_type]
    for t in rng.sample(absent, min(negatives, len(absent))):
        out.append(Example(tmpl.for_entity(t), record.text, (), "ner", dataset))
    return out


def re_examples(record: Record, tmpl: InstructionTemplates, predicates_by_type: dict[str, list[str]],
                all_predicates: list[str], negatives: int, rng: random.Random, dataset: str) -> list[Example]:
    objects: dict[tuple, set] = defaultdict(set)
    subjects: dict[tuple, str] = {}
    for rel in record.relations:
        key = (rel.subject.start, rel.subject.end, rel.subject.text)
        subjects[key] = rel.subject.type
        objects[(key, rel.predicate)].add((rel.object.start, rel.object.end))
    out = []
    for (subj, pred), spans in sorted(objects.items()):
        out.append(Example(tmpl.for_relation(subj[2], pred), record.text, tuple(sorted(spans)), "re", dataset))
    for subj, stype in sorted(subjects.items()):
        gold = {p for (s, p) in objects if s == subj}
        pool = [p for p in predicates_by_type.get(stype, all_predicates) if p not in gold]
        if len(pool) < negatives:
            pool = [p for p in all_predicates if p not in gold]
        for pred in rng.sample(pool, min(negatives, len(pool))):
            out.append(Example(tmpl.for_relation(subj[2], pred), record.text, (), "re", dataset))
    return out


def build_examples(specs: list[DatasetSpec], seed: int, epoch: int = 0) -> list[Example]:
    """All examples of one epoch, deduplicated on (instruction, text) and shuffled."""
    merged: dict[tuple[str, str], Example] = {}
    for spec in specs:
        if not spec.records:
            spec.load()
        tmpl = templates(spec.language)
        rng = _rng(seed, spec.name, epoch)
        all_types = sorted({e.type for r in spec.records for e in r.entities})
        all_predicates = sorted({rel.predicate for r in spec.records for rel in r.relations})
        by_type: dict[str, set] = defaultdict(set)
        for r in spec.records:
            for rel in r.relations:
                by_type[rel.subject.type].add(rel.predicate)
        predicates_by_type = {t: sorted(p) for t, p in by_type.items()}
        for record in _sample_records(spec.records, spec.weight, rng):
            examples = []
            if "ner" in spec.tasks and all_types:
                examples += ner_examples(record, tmpl, all_types, spec.ner_negatives, rng, spec.name)
            if "re" in spec.tasks and record.relations:
                examples += re_examples(record, tmpl, predicates_by_type, all_predicates,
                                        spec.re_negatives, rng, spec.name)
            for ex in examples:
                key = (ex.instruction, ex.text)
                if key in merged:
                    prev = merged[key]
                    ex = Example(ex.instruction, ex.text, tuple(sorted(set(prev.spans) | set(ex.spans))),
                                 ex.task, prev.dataset)
                merged[key] = ex
    out = list(merged.values())
    _rng(seed, "shuffle", epoch).shuffle(out)
    return out


def resolve_from(root: Path, value: str | Path) -> Path:
    """A path from a training config: as given when absolute, else relative to the config's folder."""
    return Path(value) if Path(value).is_absolute() else (Path(root) / value).resolve()


def specs_from_config(datasets: list[dict], root: Path) -> list[DatasetSpec]:
    specs = []
    for item in datasets:
        item = dict(item)
        for key in ("path", "label_map", "dev_path"):
            if item.get(key):
                item[key] = str(resolve_from(root, item[key]))
        if "tasks" in item:
            item["tasks"] = tuple(item["tasks"])
        specs.append(DatasetSpec(**item))
    return specs
