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
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
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
    # the names its label map gives one label, most specific first (GPE.NAM: 行政区, 地名)
    aliases: list[tuple[str, ...]] = field(default_factory=list, repr=False)

    def load(self) -> DatasetSpec:
        label_map = load_label_map(self.label_map)
        self.aliases = [tuple(names) for names in label_map.values() if isinstance(names, list) and len(names) > 1]
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


def _dataset_labels(spec: DatasetSpec) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """A dataset's entity types, predicates, and predicates per subject type (the ones a schema would ask)."""
    all_types = sorted({e.type for r in spec.records for e in r.entities})
    all_predicates = sorted({rel.predicate for r in spec.records for rel in r.relations})
    by_type: dict[str, set] = defaultdict(set)
    for r in spec.records:
        for rel in r.relations:
            by_type[rel.subject.type].add(rel.predicate)
    return all_types, all_predicates, {t: sorted(p) for t, p in by_type.items()}


def build_examples(specs: list[DatasetSpec], seed: int, epoch: int = 0) -> list[Example]:
    """All examples of one epoch, deduplicated on (instruction, text) and shuffled."""
    merged: dict[tuple[str, str], Example] = {}
    for spec in specs:
        if not spec.records:
            spec.load()
        tmpl = templates(spec.language)
        rng = _rng(seed, spec.name, epoch)
        all_types, all_predicates, predicates_by_type = _dataset_labels(spec)
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


# --------------------------------------------------------------------------- slot models
@dataclass(frozen=True)
class SlotExample:
    """One row of a slot model: a prompt (its slots' words, optional subject cue) over a text, gold spans per slot."""

    kind: str  # "entity" or "relation": the marker before each slot
    prefix: str
    slots: tuple[str, ...]
    text: str
    spans: tuple[tuple[tuple[int, int], ...], ...]  # per slot: gold character spans, end exclusive
    task: str
    dataset: str
    cues: tuple[str, ...] = ()  # several subjects in one row: each slot's subject cue (hugie.prompts.Prompt)
    companion: tuple[str, ...] = ()  # a relation row of a reuse_layers model: the entity slots of its text's pass
    subject: str = ""  # a relation row of one subject: the subject (a model with slots.mark_subject marks it)


@dataclass
class SlotRecipe:
    """How slot examples are drawn. NER: a text with its dataset's types as slots, each dropped with ``drop``
    (so no slot relies on the others), shuffled, and with probability ``foreign`` a type of another NER dataset
    of the language that shares no character with this dataset's types and is no other name of one of their labels
    in a label map (crude guards against synonyms, which would be false negatives), so slot names are read, not
    recalled; a span two asked slots answer through one label's names answers only the narrower one.
    RE: one subject with its gold predicates and up to ``re_negatives`` other predicates of its subject type; with
    probability ``together`` all subjects of a text share one row, each cue before its own slots (negatives split
    between them), for models that read several subjects per pass (``slots.max_subjects``). With probability
    ``idle_subjects``, an entity of a subject type that is in no relation of its text (one a schema finds and
    asks about) gets a row of its type's predicates, all without answer, so a subject with nothing to say
    learns to answer nothing (datasets whose entities are all relation arguments have none).
    With ``subjects_per_row`` above 0 a text's subjects, idle ones included, share rows (with probability
    ``together``) of 2 to ``subjects_per_row`` subjects, each with its share of the row's ``max_slots`` slots, as a
    model whose ``slots.max_subjects`` is that many packs the subjects a schema finds. ``object_subjects``: with that
    probability each, a relation object whose type has predicates of its own (a schema finds it as a subject too)
    joins those rows, or (without ``subjects_per_row``) gets a row of its type's predicates, all without answer.
    With probability ``instruction`` an example is one slot holding a whole instruction (the HugIE template),
    so free-form instructions keep working.
    With probability ``reuse`` a relation row (a model with ``slots.reuse_layers``) reads its text's states from
    an entity pass over the text, as it runs: its ``companion`` holds that pass's entity slots, the dataset's
    subject types (each kept with probability 1 - ``drop``) and now and then another of its entity types."""

    max_slots: int = 16
    max_prompt_tokens: int = 128
    drop: float = 0.2
    foreign: float = 0.1
    re_negatives: int = 8
    instruction: float = 0.1
    together: float = 0.0
    idle_subjects: float = 0.0
    subjects_per_row: int = 0
    object_subjects: float = 0.0
    reuse: float = 0.0


def _foreign_pool(specs: list[DatasetSpec]) -> dict[str, list[tuple[str, set]]]:
    """Per language: (type, dataset names) of the types of NER datasets (not relation sets: their entities are
    only relation arguments, so a type such as Date would be a negative wherever a date goes unannotated)."""
    pool: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for spec in specs:
        if "ner" in spec.tasks and not any(r.relations for r in spec.records):
            for r in spec.records:
                for e in r.entities:
                    pool[spec.language][e.type].add(spec.name)
    return {lang: sorted(types.items()) for lang, types in pool.items()}


def _unrelated(candidate: str, types: list[str], language: str) -> bool:
    if language == "zh":
        return not any(set(candidate) & set(t) for t in types)
    return not any(candidate[:4].lower() == t[:4].lower() for t in types)


def _alias_names(specs: list[DatasetSpec]) -> dict[str, set[str]]:
    """Each type name's other names for one label in any dataset's label map (行政区 ↔ 地名, 公司 ↔ 机构名): a
    foreign type named alongside one of a dataset's types labels some of its spans, so it is no negative there."""
    related: dict[str, set[str]] = defaultdict(set)
    for spec in specs:
        for names in spec.aliases:
            for name in names:
                related[name].update(n for n in names if n != name)
    return related


def _narrower_names(aliases: list[tuple[str, ...]]) -> dict[str, set[str]]:
    """Each name's narrower names: those a label map lists before it for one label (地名: {行政区})."""
    narrower: dict[str, set[str]] = defaultdict(set)
    for names in aliases:
        for i, name in enumerate(names):
            narrower[name].update(names[:i])
    return narrower


def slot_ner_examples(record: Record, tmpl: InstructionTemplates, all_types: list[str], foreign: list[str],
                      recipe: SlotRecipe, rng: random.Random, dataset: str,
                      narrower: dict[str, set[str]] | None = None) -> list[SlotExample]:
    """One entity example of ``record`` (see :class:`SlotRecipe`). A span that answers two slots through one label's
    names (``narrower``: 地名 → {行政区}) answers only the narrower one: asked for both, a user expects the city under
    行政区 and the mountain under 地名, as one type per span decodes."""
    by_type: dict[str, set] = defaultdict(set)
    for ent in record.entities:
        by_type[ent.type].add((ent.start, ent.end))
    slots = [t for t in all_types if rng.random() >= recipe.drop] or [rng.choice(all_types)]
    if foreign and rng.random() < recipe.foreign:
        slots.append(rng.choice(foreign))
    rng.shuffle(slots)
    slots = slots[: recipe.max_slots]
    if rng.random() < recipe.instruction:
        t = rng.choice(slots)
        return [SlotExample("entity", "", (tmpl.for_entity(t),), record.text, (tuple(sorted(by_type.get(t, ()))),),
                            "ner", dataset)]
    asked = set(slots)
    shadowed = {t: set().union(*(by_type.get(n, set()) for n in (narrower or {}).get(t, ()) if n in asked))
                for t in slots}
    spans = tuple(tuple(sorted(by_type.get(t, set()) - shadowed[t])) for t in slots)
    return [SlotExample("entity", "", tuple(slots), record.text, spans, "ner", dataset)]


def slot_re_examples(record: Record, tmpl: InstructionTemplates, predicates_by_type: dict[str, list[str]],
                     all_predicates: list[str], recipe: SlotRecipe, rng: random.Random,
                     dataset: str) -> list[SlotExample]:
    from hugie.prompts import subject_cue

    objects: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    subject_types: dict[tuple, str] = {}
    for rel in record.relations:
        key = (rel.subject.start, rel.subject.end, rel.subject.text)
        subject_types[key] = rel.subject.type
        objects[key][rel.predicate].add((rel.object.start, rel.object.end))
    subjects = sorted(objects.items())
    if recipe.subjects_per_row:
        return _subject_groups(record, tmpl, subjects, subject_types, predicates_by_type, all_predicates, recipe,
                               rng, dataset)
    out = _idle_subject_rows(record, tmpl, predicates_by_type, recipe, rng, dataset)
    out += _object_subject_rows(record, tmpl, {key[2] for key, _ in subjects}, predicates_by_type, recipe, rng,
                                dataset)
    if not subjects:
        return out
    if recipe.together and len(subjects) > 1 and rng.random() < recipe.together:
        return out + [_subjects_together(record, tmpl, subjects, subject_types, predicates_by_type, all_predicates,
                                         recipe, rng, dataset)]
    for subject, gold in subjects:
        slots = _subject_slots(gold, subject_types[subject], predicates_by_type, all_predicates,
                               recipe.re_negatives, recipe, rng)
        if rng.random() < recipe.instruction:
            p = rng.choice(slots)
            out.append(SlotExample("entity", "", (tmpl.for_relation(subject[2], p),), record.text,
                                   (tuple(sorted(gold.get(p, ()))),), "re", dataset))
            continue
        spans = tuple(tuple(sorted(gold.get(p, ()))) for p in slots)
        out.append(SlotExample("relation", subject_cue(subject[2], tmpl.language), tuple(slots), record.text,
                               spans, "re", dataset, subject=subject[2]))
    return out


def _idle_subjects(record: Record, predicates_by_type: dict[str, list[str]], recipe: SlotRecipe,
                   rng: random.Random) -> Iterator:
    """Entities of a subject type that are no argument of any relation of ``record``, each with probability
    ``idle_subjects``; lazily, so a caller's own draws for one come before the next is chosen."""
    if not recipe.idle_subjects:
        return
    arguments = {(x.start, x.end) for rel in record.relations for x in (rel.subject, rel.object)}
    for ent in record.entities:
        if (predicates_by_type.get(ent.type) and (ent.start, ent.end) not in arguments
                and rng.random() < recipe.idle_subjects):
            yield ent


def _idle_row(text: str, subject_type: str, record: Record, tmpl: InstructionTemplates,
              predicates_by_type: dict[str, list[str]], recipe: SlotRecipe, rng: random.Random,
              dataset: str) -> SlotExample:
    """A row for an idle subject: its type's predicates (up to ``re_negatives`` + 1, shuffled), all without answer."""
    from hugie.prompts import subject_cue

    pool = predicates_by_type[subject_type]
    slots = rng.sample(pool, min(len(pool), recipe.re_negatives + 1, recipe.max_slots))
    return SlotExample("relation", subject_cue(text, tmpl.language), tuple(slots), record.text,
                       tuple(() for _ in slots), "re", dataset, subject=text)


def _idle_subject_rows(record: Record, tmpl: InstructionTemplates, predicates_by_type: dict[str, list[str]],
                       recipe: SlotRecipe, rng: random.Random, dataset: str) -> list[SlotExample]:
    """One :func:`_idle_row` per idle subject (:func:`_idle_subjects`), each drawn as it is chosen."""
    return [_idle_row(ent.text, ent.type, record, tmpl, predicates_by_type, recipe, rng, dataset)
            for ent in _idle_subjects(record, predicates_by_type, recipe, rng)]


def _object_subjects(record: Record, named: set[str], predicates_by_type: dict[str, list[str]],
                     recipe: SlotRecipe, rng: random.Random) -> Iterator:
    """Relation objects of ``record`` whose type has predicates of its own (a schema finds them as subjects too) and
    whose text is not in ``named`` (each one taken is added), each with probability ``object_subjects``; lazily, so a
    caller's own draws for one come before the next is chosen."""
    if not recipe.object_subjects:
        return
    for rel in record.relations:
        if (rel.object.text not in named and predicates_by_type.get(rel.object.type)
                and rng.random() < recipe.object_subjects):
            named.add(rel.object.text)
            yield rel.object


def _object_subject_rows(record: Record, tmpl: InstructionTemplates, subjects: set[str],
                         predicates_by_type: dict[str, list[str]], recipe: SlotRecipe, rng: random.Random,
                         dataset: str) -> list[SlotExample]:
    """An :func:`_idle_row` for each object :func:`_object_subjects` chooses that is no subject in ``record``."""
    return [_idle_row(obj.text, obj.type, record, tmpl, predicates_by_type, recipe, rng, dataset)
            for obj in _object_subjects(record, set(subjects), predicates_by_type, recipe, rng)]


def _subject_groups(record: Record, tmpl: InstructionTemplates, subjects: list, subject_types: dict,
                    predicates_by_type: dict[str, list[str]], all_predicates: list[str], recipe: SlotRecipe,
                    rng: random.Random, dataset: str) -> list[SlotExample]:
    """``subjects_per_row`` rows: with probability ``together`` the text's subjects (idle ones included, and each
    object of a subject type with probability ``object_subjects``), in random order, share rows of 2 to
    ``subjects_per_row`` subjects, each cue before its share of the row's slots; otherwise one row per subject, as
    without ``subjects_per_row``."""
    from hugie.prompts import subject_cue

    idle = list(_idle_subjects(record, predicates_by_type, recipe, rng))
    everyone = [(key[2], gold, subject_types[key]) for key, gold in subjects]
    everyone += [(ent.text, {}, ent.type) for ent in idle]
    if len(everyone) < 2 or rng.random() >= recipe.together:
        apart = replace(recipe, subjects_per_row=0, idle_subjects=0.0, object_subjects=0.0)
        rows = [_idle_row(ent.text, ent.type, record, tmpl, predicates_by_type, recipe, rng, dataset) for ent in idle]
        return rows + slot_re_examples(record, tmpl, predicates_by_type, all_predicates, apart, rng, dataset)
    named = {text for text, _, _ in everyone}  # objects a schema finds as subjects are asked alongside
    everyone += [(obj.text, {}, obj.type) for obj in _object_subjects(record, named, predicates_by_type, recipe, rng)]
    rng.shuffle(everyone)
    rows, start = [], 0
    while start < len(everyone):
        group = everyone[start: start + rng.randint(2, max(2, recipe.subjects_per_row))]
        start += len(group)
        share = max(1, recipe.max_slots // len(group))
        slots, cues, spans = [], [], []
        for text, gold, subject_type in group:
            if gold:
                mine = _subject_slots(gold, subject_type, predicates_by_type, all_predicates,
                                      max(0, share - len(gold)), recipe, rng)
            else:
                pool = predicates_by_type.get(subject_type, all_predicates)
                mine = rng.sample(pool, min(len(pool), share))
            slots += mine
            cues += [subject_cue(text, tmpl.language)] * len(mine)
            spans += [tuple(sorted(gold.get(p, ()))) for p in mine]
        rows.append(SlotExample("relation", "", tuple(slots), record.text, tuple(spans), "re", dataset, tuple(cues)))
    return rows


def _subject_slots(gold: dict[str, set], subject_type: str, predicates_by_type: dict[str, list[str]],
                   all_predicates: list[str], negatives: int, recipe: SlotRecipe, rng: random.Random) -> list[str]:
    """One subject's slots: its gold predicates (a few dropped) and up to ``negatives`` others of its type, shuffled."""
    pool = [p for p in predicates_by_type.get(subject_type, all_predicates) if p not in gold]
    sampled = rng.sample(pool, min(len(pool), negatives))
    slots = [p for p in gold if rng.random() >= recipe.drop / 2] or [rng.choice(sorted(gold))]
    slots = (slots + sampled)[: recipe.max_slots]
    rng.shuffle(slots)
    return slots


def _subjects_together(record: Record, tmpl: InstructionTemplates, subjects: list, subject_types: dict,
                       predicates_by_type: dict[str, list[str]], all_predicates: list[str], recipe: SlotRecipe,
                       rng: random.Random, dataset: str) -> SlotExample:
    """All subjects of a text in one row, in random order, each cue before its own slots (the trainer keeps what
    fits the prompt budget)."""
    from hugie.prompts import subject_cue

    rng.shuffle(subjects)
    negatives = max(1, recipe.re_negatives // len(subjects))
    slots, cues, spans = [], [], []
    for subject, gold in subjects:
        for p in _subject_slots(gold, subject_types[subject], predicates_by_type, all_predicates, negatives,
                                recipe, rng):
            slots.append(p)
            cues.append(subject_cue(subject[2], tmpl.language))
            spans.append(tuple(sorted(gold.get(p, ()))))
    return SlotExample("relation", "", tuple(slots), record.text, tuple(spans), "re", dataset, tuple(cues))


def build_slot_examples(specs: list[DatasetSpec], seed: int, epoch: int = 0,
                        recipe: SlotRecipe | None = None) -> list[SlotExample]:
    """All slot examples of one epoch, shuffled (deterministic under ``seed`` and ``epoch``)."""
    recipe = recipe or SlotRecipe()
    for spec in specs:
        if not spec.records:
            spec.load()
    pool, aliases = _foreign_pool(specs), _alias_names(specs)
    out: list[SlotExample] = []
    for spec in specs:
        tmpl = templates(spec.language)
        rng = _rng(seed, spec.name, epoch, "slots")
        companion_rng = _rng(seed, spec.name, epoch, "companions")
        all_types, all_predicates, predicates_by_type = _dataset_labels(spec)
        foreign = [t for t, names in pool.get(spec.language, []) if spec.name not in names
                   and _unrelated(t, all_types, spec.language) and not aliases.get(t, set()) & set(all_types)]
        narrower = _narrower_names(spec.aliases)
        for record in _sample_records(spec.records, spec.weight, rng):
            if "ner" in spec.tasks and all_types:
                out += slot_ner_examples(record, tmpl, all_types, foreign, recipe, rng, spec.name, narrower)
            if "re" in spec.tasks and (record.relations or recipe.idle_subjects):
                rows = slot_re_examples(record, tmpl, predicates_by_type, all_predicates, recipe, rng, spec.name)
                out += _with_companions(rows, sorted(predicates_by_type), all_types, recipe, companion_rng)
    _rng(seed, "shuffle", epoch, "slots").shuffle(out)
    return out


def _with_companions(rows: list[SlotExample], subject_types: list[str], all_types: list[str], recipe: SlotRecipe,
                     rng: random.Random) -> list[SlotExample]:
    """``rows`` with each relation row given, with probability ``reuse``, the entity slots of an entity pass over
    its text (:class:`SlotRecipe`); drawn from their own generator, so recipes without ``reuse`` are unchanged."""
    if not recipe.reuse or not subject_types:
        return rows
    others = [t for t in all_types if t not in subject_types]
    out = []
    for row in rows:
        if row.kind == "relation" and rng.random() < recipe.reuse:
            slots = [t for t in subject_types if rng.random() >= recipe.drop] or [rng.choice(subject_types)]
            slots += [t for t in others if rng.random() < 0.1]
            rng.shuffle(slots)
            row = replace(row, companion=tuple(slots[: recipe.max_slots]))
        out.append(row)
    return out
