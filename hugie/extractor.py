"""Extractor: the one public entry point the CLI, the service and the evaluation share.

text → instruction → tokens (windows for long texts) → backend (q, k, bias → spans) → decoder
(token spans → character spans in the caller's text, windows merged, deduped, top-k).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .configuration import HugieConfig, has_torch_weights
from .errors import HugieError
from .instructions import detect_language, templates
from .limits import RequestLimits
from .prompts import ENTITY, RELATION, Prompt, PromptTokenizer, subject_cue
from .scoring import logit, sigmoid
from .tokenization import HugieTokenizer, TextTokens, mentions, pack_by_length
from .types import (
    EntitiesResult,
    Entity,
    ExtractRequest,
    ExtractResult,
    Relation,
    RelationSchema,
    Schema,
    SchemaResult,
    Span,
    SpansResult,
    as_request,
    request_dict,
)
from .windows import plan_windows

log = logging.getLogger("hugie")

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "hugie-small"
#: a model call pads its rows to the longest; rows shorter than this share of it go to another call
MIN_FILL = 0.8
#: padded tokens per model call: on 2 CPU cores 1,024-token calls read a 20,000-character text in 3.65 s against
#: 4.10 s for 2,048 and 4.24 s for 8,192, with a smaller memory peak
BATCH_TOKENS = 1024
#: instructions whose tokens an Extractor keeps (entity types and relation questions repeat across requests)
INSTRUCTION_CACHE = 4096


def checked_threshold(value) -> float:
    """``value`` as a float, or E003 unless it is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise HugieError("E003", value=value)
    return float(value)


def default_model_path() -> Path:
    """The embedded default model (``HUGIE_MODEL`` overrides)."""
    return Path(os.environ.get("HUGIE_MODEL", DEFAULT_MODEL_DIR))


def resolve_model_path(path_or_id: str | os.PathLike | None) -> Path:
    """A local model directory: the default, a path, or a hub id downloaded to the HF cache."""
    if path_or_id is None:
        path = default_model_path()
        if not (path / "config.json").exists():
            raise HugieError("E012", path=path, file="config.json (the default model is not installed)")
        return path
    path = Path(path_or_id)
    if path.exists():
        if not (path / "config.json").exists():
            raise HugieError("E012", path=path, file="config.json")
        return path
    name = str(path_or_id)
    if path.is_absolute() or name.startswith(".") or name.count("/") > 1:  # a path, not a hub id
        raise HugieError("E015", name=name, reason="no such directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as exc:  # offline, unknown id, ...
        raise HugieError("E015", name=name, reason=f"not a local directory and not downloadable: {exc}") from exc


def keep_best_type(by_type: dict[str, list[Span]]) -> dict[str, list[Span]]:
    """Drop a span from every type but the one that scored it highest (ties: the first type)."""
    best: dict[tuple[int, int], tuple[float, str]] = {}
    for t, spans in by_type.items():
        for s in spans:
            if (s.start, s.end) not in best or s.score > best[(s.start, s.end)][0]:
                best[(s.start, s.end)] = (s.score, t)
    return {t: [s for s in spans if best[(s.start, s.end)][1] == t] for t, spans in by_type.items()}


def decode_entities(by_type: dict[str, list[Span]], *, flat: bool, one_type: bool) -> dict[str, list[Span]]:
    """Entity passes' spans per type: every span (overlaps and several types allowed), one type per
    span, or flat (no overlaps)."""
    if flat:
        return keep_flat(by_type)
    return keep_best_type(by_type) if one_type else by_type


def keep_flat(by_type: dict[str, list[Span]]) -> dict[str, list[Span]]:
    """No two spans overlap, across types or within one: highest score first, each span kept unless it overlaps one
    already kept (ties: the earlier span, then the first type). Implies one type per span."""
    order = sorted(((s.score, i, t, s) for i, (t, spans) in enumerate(by_type.items()) for s in spans),
                   key=lambda x: (-x[0], x[3].start, x[3].end, x[1]))
    taken: list[tuple[int, int]] = []
    kept: set[tuple[str, int, int]] = set()
    for _, _, t, s in order:
        if all(s.end <= a or s.start >= b for a, b in taken):
            taken.append((s.start, s.end))
            kept.add((t, s.start, s.end))
    return {t: [s for s in spans if (t, s.start, s.end) in kept] for t, spans in by_type.items()}


@dataclass(frozen=True)
class Ask:
    """One question to the model: a whole instruction (one-slot models), or a slot's words (slot models: an
    entity type or a free-form instruction behind ``[E]``, a predicate behind ``[R]`` after its subject's cue)."""

    kind: str  # INSTRUCTION, or hugie.prompts.ENTITY / RELATION
    words: str
    prefix: str = ""
    subject: str = ""  # a relation slot's subject (its cue is ``prefix``)


INSTRUCTION = "instruction"


@dataclass
class _Row:
    """One encoder pass of a text: its prompt (one instruction, or several slots) and the asks each slot answers."""

    text: str
    prompt: TextTokens
    markers: list[int] | None  # each slot's marker index in the prompt (slot models)
    slot_asks: list[list[int]]  # per slot: the asks it answers (same words asked at several thresholds)
    kind: str = INSTRUCTION  # ENTITY or RELATION slots (slot models), or one instruction
    subject: str = ""  # the subject of a row of one subject's relation slots


@dataclass
class _Unit:
    """One encoder row: a pass restricted to one window (text tokens ``lo`` to ``hi``) of its text."""

    row: _Row
    text: TextTokens
    lo: int
    hi: int

    @property
    def window(self) -> tuple[str, int, int]:
        return self.row.text, self.lo, self.hi

    @property
    def length(self) -> int:
        return len(self.row.prompt) + len(self.text) + 3


def count_spans(result: ExtractResult) -> int:
    """Spans in one answer: spans, entities of every type, or entities plus relations."""
    if isinstance(result, SpansResult):
        return len(result.spans)
    if isinstance(result, EntitiesResult):
        return sum(len(v) for v in result.entities.values())
    return len(result.entities) + len(result.relations)


class _Asks:
    """Distinct (ask, text, threshold) questions: requests asking the same share one."""

    def __init__(self):
        self.index: dict[tuple[Ask, str, float, bool], int] = {}
        self.asks: list[Ask] = []
        self.texts: list[str] = []
        self.thresholds: list[float] = []
        self.needs: list[int | None] = []  # the most spans an asker reads (its top_k); None: every span

    def add(self, ask: Ask, text: str, threshold: float, top_k: int | None = None) -> int:
        # askers of every span and askers of their top k do not share: a pass over the span cap fails the
        # first and answers the second, whatever else shares a call
        key = (ask, text, threshold, top_k is None)
        if key not in self.index:
            self.index[key] = len(self.asks)
            self.asks.append(ask)
            self.texts.append(text)
            self.thresholds.append(threshold)
            self.needs.append(top_k)
        i = self.index[key]
        if top_k is not None:  # the key keeps askers of every span (need None) apart
            self.needs[i] = max(self.needs[i], top_k)
        return i


class _RequestPlan:
    """One request's asks and decoding: entity (or instruction) asks, then relation asks of the subjects found."""

    def __init__(self, request: ExtractRequest, extractor: Extractor):
        self.request, self.extractor = request, extractor
        self.threshold = extractor._check_threshold(request.threshold)
        self.top_k = request.top_k
        self.schema = request.schema_
        self.tmpl = None if request.mode == "instruction" else extractor._templates(request.text, request.language)
        self.asked: dict[str | None, int] = {}  # entity type (None: the instruction) -> ask index
        self.spans: dict[str | None, list[Span]] = {}
        self.relation_asks: list[tuple[RelationSchema, Entity, int]] = []
        self.error: HugieError | None = None

    def check(self, limits: RequestLimits | None) -> None:
        """What can be checked before any model work: prompt lengths (E007) and ``limits``."""
        passes = self.extractor._count_rows(list(self.entity_asks().values()), self.request.text)
        if limits is not None:
            limits.check_request(self.request, passes)

    def entity_asks(self) -> dict[str | None, Ask]:
        r, ex = self.request, self.extractor
        if r.mode == "instruction":
            return {None: ex._instruction_ask(r.instruction)}
        if r.mode == "entities":
            types = r.entities
        else:
            types = self.schema.entities + [x.subject for x in self.schema.relations]
        return {t: ex._entity_ask(self.tmpl, t) for t in dict.fromkeys(types)}

    def ask_entities(self, asks: _Asks) -> None:
        self.asked = {name: asks.add(ask, self.request.text, self.threshold, self.top_k)
                      for name, ask in self.entity_asks().items()}

    def _spans(self, found: list[tuple[int, int, float]] | None, threshold: float,
               span_cap: int | None = None) -> list[Span]:
        if found is None:
            raise HugieError("E114", field="request", value=f"more than {span_cap}", limit=span_cap)
        text = self.request.text
        kept = [(s, e, p) for s, e, p in found if p >= threshold][:self.top_k]
        return [Span(text=text[s:e], start=s, end=e, score=p) for s, e, p in kept]

    def take_entities(self, found: list, span_cap: int | None = None) -> None:
        self.spans = {name: self._spans(found[i], self.threshold, span_cap) for name, i in self.asked.items()}

    def ask_relations(self, asks: _Asks, limits: RequestLimits | None = None) -> None:
        """Ask each relation of each subject found; checked against ``limits`` before any is added."""
        if self.schema is None or not self.schema.relations:
            return
        r, ex = self.request, self.extractor
        self.object_threshold = ex.relation_threshold(r.threshold, r.relation_threshold)
        planned = []
        for rel in self.schema.relations:
            subjects = self.spans.get(rel.subject, [])
            if limits is not None:
                limits.check_subjects(f"{rel.subject} {rel.predicate}", len(subjects))
            planned += [(rel, subj, ex._relation_ask(self.tmpl, subj.text, rel.predicate)) for subj in subjects]
        passes = ex._count_rows(list(dict.fromkeys(ask for _, _, ask in planned)), r.text)
        if limits is not None:
            limits.check_work(passes, len(r.text))
        for rel, subj, ask in planned:
            index = asks.add(ask, r.text, self.object_threshold, self.top_k)
            self.relation_asks.append((rel, Entity(type=rel.subject, **subj.model_dump()), index))

    def result(self, found: list, span_cap: int | None = None) -> ExtractResult:
        r = self.request
        if r.mode == "instruction":
            return SpansResult(spans=self.spans[None])
        flat, one_type = self.extractor.entity_decoding(r.one_type_per_span, r.flat_ner)
        by_type = decode_entities(self.spans, flat=flat, one_type=one_type)
        if r.mode == "entities":
            return EntitiesResult(entities={t: by_type[t] for t in self.asked})
        entities = [Entity(type=t, **s.model_dump()) for t in self.asked for s in by_type.get(t, [])]
        relations = []
        for rel, subj, index in self.relation_asks:
            for obj in self._spans(found[index], self.object_threshold, span_cap):
                relations.append(Relation(subject=subj, predicate=rel.predicate,
                                          object=Entity(type=rel.object or "", **obj.model_dump()),
                                          score=subj.score * obj.score))
        return SchemaResult(entities=entities, relations=relations)


class Extractor:
    """Instruction-driven span extraction over one backend.

    >>> ex = Extractor.load()                                 # doctest: +SKIP
    >>> ex.extract("找到文章中所有【人名】类型的实体？", "叶老桂认为……")  # doctest: +SKIP
    [Span(text='叶老桂', start=0, end=3, score=0.98)]

    :meth:`run` is the one batched entry point (many documents, any mix of modes); ``extract``,
    ``extract_entities`` and ``extract_schema`` are thin wrappers over it.
    """

    def __init__(self, backend, tokenizer: HugieTokenizer, config: HugieConfig, *,
                 batch_size: int = 32, batch_tokens: int = BATCH_TOKENS, model_path: str | None = None):
        self.backend = backend
        self.tokenizer = copy.copy(tokenizer)  # max_length below is this extractor's, not the caller's
        self.config = config
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.model_path = model_path
        self.tokenizer.max_length = min(config.max_seq_length, tokenizer.max_length or config.max_seq_length)
        self.prompts = PromptTokenizer(self.tokenizer, config.slots) if config.slotted else None
        #: relation rows take their text's states after this many layers from the text's entity pass (0: never)
        self.reuse_layers = config.reuse_layers
        #: such rows mark their subject's mentions in those states
        self.mark_subject = config.mark_subject
        self._word_tokens: dict[str, TextTokens] = {}  # see _tokens
        self._word_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path_or_id: str | os.PathLike | None = None, backend: str = "auto", device: str = "auto",
             concurrent: bool = False, **kwargs) -> Extractor:
        """Load a model directory (or hub id; ``None`` = the embedded default). ``concurrent``: model calls will
        run from several threads at once (the service's lanes), so onnxruntime's threads sleep between their
        parallel sections instead of spinning (measured on 2 cores: a short call beside a long one 16.8 -> 8.1 ms,
        alone 5.2 -> 7.9 ms)."""
        path = resolve_model_path(path_or_id)
        config = HugieConfig.from_pretrained(path)
        tokenizer = HugieTokenizer.from_file(path / "tokenizer.json", max_length=config.max_seq_length)
        has_onnx = any(path.glob("*.onnx"))
        has_torch = has_torch_weights(path)
        if backend == "auto":
            backend = "onnx" if has_onnx else "torch"
        if backend == "torch":
            if not has_torch:
                raise HugieError("E012", path=path, file="model.safetensors (export-only model: use backend='onnx')")
            from .backends.torch import TorchBackend
            from .modeling import GlobalPointerModel

            engine = TorchBackend(GlobalPointerModel.from_pretrained(path), device=device)
        elif backend == "onnx":
            if not has_onnx:
                raise HugieError("E012", path=path, file="model.onnx (run `hugie export` first)")
            from .backends.onnx import OnnxBackend

            engine = OnnxBackend(path, config, device=device, spin=not concurrent)
        else:
            raise HugieError("E013", backend=backend, choices="auto, torch, onnx")
        return cls(engine, tokenizer, config, model_path=str(path), **kwargs)

    @classmethod
    def from_model(cls, model, tokenizer: HugieTokenizer, device: str = "cpu", **kwargs) -> Extractor:
        """Wrap an in-memory GlobalPointerModel (used by training-time evaluation)."""
        from .backends.torch import TorchBackend

        return cls(TorchBackend(model, device=device), tokenizer, model.config, **kwargs)

    # ------------------------------------------------------------------ options
    def _check_threshold(self, threshold: float | None) -> float:
        return checked_threshold(self.config.threshold if threshold is None else threshold)

    def relation_threshold(self, threshold: float | None = None, relation_threshold: float | None = None) -> float:
        """The threshold for relation-object passes: ``relation_threshold`` if given, else an explicit
        ``threshold``, else the model's relation threshold (its ``threshold`` if it has none)."""
        if relation_threshold is not None:
            return self._check_threshold(relation_threshold)
        if threshold is not None:
            return self._check_threshold(threshold)
        return self._check_threshold(self.config.relation_threshold)

    def one_type_per_span(self, value: bool | None = None) -> bool:
        """Whether entity passes keep a span only under its best-scoring type: ``value`` if given,
        else the model's default."""
        return bool(self.config.one_type_per_span) if value is None else bool(value)

    def flat_ner(self, value: bool | None = None, one_type_per_span: bool | None = None) -> bool:
        """Whether entity passes keep no two overlapping spans (GLiNER's ``flat_ner``): ``value`` if
        given, else the model's default — which an explicit ``one_type_per_span=False`` turns off."""
        if value and one_type_per_span is False:
            raise HugieError("E027")
        if value is not None:
            return bool(value)
        return bool(self.config.flat_ner) and one_type_per_span is not False

    def entity_decoding(self, one_type_per_span: bool | None = None,
                        flat_ner: bool | None = None) -> tuple[bool, bool]:
        """``(flat, one_type)`` for entity passes, resolved by :meth:`flat_ner` and
        :meth:`one_type_per_span` (flat implies one type per span)."""
        flat = self.flat_ner(flat_ner, one_type_per_span)
        return flat, flat or self.one_type_per_span(one_type_per_span)

    def _templates(self, text: str, language: str | None):
        return templates(language or detect_language(text), self.config.instructions)

    # ------------------------------------------------------------------ asks
    def _instruction_ask(self, instruction: str) -> Ask:
        return Ask(ENTITY, instruction) if self.prompts else Ask(INSTRUCTION, instruction)

    def _entity_ask(self, tmpl, entity_type: str) -> Ask:
        return Ask(ENTITY, entity_type) if self.prompts else Ask(INSTRUCTION, tmpl.for_entity(entity_type))

    def _relation_ask(self, tmpl, subject: str, predicate: str) -> Ask:
        if self.prompts:
            return Ask(RELATION, predicate, subject_cue(subject, tmpl.language), subject)
        return Ask(INSTRUCTION, tmpl.for_relation(subject, predicate))

    # ------------------------------------------------------------------ the one batched entry point
    def run(self, requests: Sequence[ExtractRequest | dict], *, limits: RequestLimits | None = None,
            cancel: threading.Event | None = None, return_errors: bool = False,
            stats: dict | None = None) -> list[ExtractResult]:
        """One result per request, in order: :class:`SpansResult` for an instruction,
        :class:`EntitiesResult` for entity types, :class:`SchemaResult` for a schema.

        Every request is validated (and checked against ``limits``) before any work starts. The asks
        of all requests — instructions and entity types first, then the relations of the subjects they
        found — are deduplicated, grouped into passes (a slot model asks all entity types of a text in one
        pass, all predicates of one subject in another), packed across documents into model calls, and
        decoded per request. ``return_errors``: a request that fails gets its :class:`HugieError` in its place
        instead of failing the others. ``cancel``: set it to stop the work between model calls (E117).
        ``stats["passes"]``: the passes that ran.
        """
        plans: list[_RequestPlan | HugieError] = []
        for request in requests:
            try:
                plan = _RequestPlan(as_request(request), self)
                plan.check(limits)
                plans.append(plan)
            except HugieError as exc:
                if not return_errors:
                    raise
                plans.append(exc)
        live = [p for p in plans if isinstance(p, _RequestPlan)]
        entity_passes = _Asks()
        for plan in live:
            plan.ask_entities(entity_passes)
        span_cap = limits.max_spans if limits is not None else None
        passes: list[int] = []
        # a reuse_layers model keeps the entity passes' text states of the texts whose subjects it will ask about
        keep_texts = {p.request.text for p in live if p.schema is not None and p.schema.relations} \
            if self.reuse_layers else set()
        states: dict[tuple[str, int, int], np.ndarray] = {}
        text_tokens: dict[str, TextTokens] = {}  # each text tokenized once for both stages
        found = self._run(entity_passes, cancel, span_cap, passes, keep_texts=keep_texts, states=states,
                          text_tokens=text_tokens)
        relation_passes = _Asks()
        for plan in live:
            try:
                plan.take_entities(found, span_cap)
                plan.ask_relations(relation_passes, limits)
            except HugieError as exc:
                if not return_errors:
                    raise
                plan.error = exc
        found = self._run(relation_passes, cancel, span_cap, passes, states=states, text_tokens=text_tokens)
        del states, text_tokens
        results: list = []
        for plan in plans:
            try:
                if isinstance(plan, HugieError):
                    raise plan
                if plan.error is not None:
                    raise plan.error
                result = plan.result(found, span_cap)
                if limits is not None:
                    limits.check_spans(count_spans(result))
                results.append(result)
            except HugieError as exc:
                if not return_errors:
                    raise
                results.append(exc)
        if stats is not None:
            stats["passes"] = sum(passes)
        return results

    def _tokens(self, strings: Sequence[str]) -> dict[str, TextTokens]:
        """Tokens of prompt words (instructions, entity types, predicates, subject cues), cached: the same ones come
        back request after request, and a request's are read before it queues, before its work and in its passes."""
        with self._word_lock:
            known = {i: self._word_tokens.get(i) for i in dict.fromkeys(strings)}
        new = [i for i, tokens in known.items() if tokens is None]
        if new:
            known.update(zip(new, self.tokenizer.tokenize(new)))
            with self._word_lock:
                if len(self._word_tokens) + len(new) > INSTRUCTION_CACHE:
                    self._word_tokens.clear()
                self._word_tokens.update((i, known[i]) for i in new)
        return known

    def _ask_length(self, ask: Ask, tokens: dict[str, TextTokens]) -> int:
        """Prompt tokens of a pass holding ``ask`` alone."""
        if ask.kind == INSTRUCTION:
            return len(tokens[ask.words])
        return (len(tokens[ask.prefix]) if ask.prefix else 0) + 1 + len(tokens[ask.words])

    def _check_asks(self, asks: Sequence[Ask]) -> dict[str, TextTokens]:
        """E007 unless every ask, alone in its pass, leaves room for at least 8 text tokens; the tokens of its words."""
        tokens = self._tokens([w for a in asks for w in (a.words, a.prefix) if w])
        max_length = self.tokenizer.max_length
        for ask in asks:
            length = self._ask_length(ask, tokens)
            if max_length - length - 3 < 8:
                raise HugieError("E007", length=length, limit=max_length - 11, max_length=max_length)
        return tokens

    def passes(self, request: ExtractRequest | dict) -> int:
        """Encoder passes a request asks for before any relation pass (what a cost check can count up front):
        1 for an instruction; for entity types (a schema's subject types included) one per type, or for a slot
        model one per group of types that fits a prompt. E007 when one is too long to leave room for the text."""
        plan = _RequestPlan(as_request(request), self)
        return self._count_rows(list(plan.entity_asks().values()), plan.request.text)

    def relation_passes(self, relations: int) -> int:
        """Passes that asking ``relations`` predicates of one subject costs: one each, or for a slot model one per
        ``max_slots`` of them (more where long predicates fill a prompt first)."""
        if not self.prompts:
            return relations
        return -(-relations // self.prompts.max_slots)

    # ------------------------------------------------------------------ model calls
    def _rows(self, asks: Sequence[Ask], texts: Sequence[str]) -> list[_Row]:
        """Passes for the asks ``asks[i]`` over ``texts[i]``: one per instruction; a slot model's asks of one text
        share passes of up to ``max_slots`` slots, ``max_prompt_tokens`` prompt tokens and ``max_subjects`` subjects
        (relation slots behind their subject's cue)."""
        tokens = self._check_asks(asks)
        groups: dict[tuple, dict[tuple[str, str], list[int]]] = {}
        subject_of: dict[str, str] = {}  # a subject cue's subject
        for index, (ask, text) in enumerate(zip(asks, texts)):
            groups.setdefault((text, ask.kind), {}).setdefault((ask.prefix, ask.words), []).append(index)
            subject_of[ask.prefix] = ask.subject
        rows = []
        for (text, kind), by_words in groups.items():
            if not self.prompts:
                for (_, words), indices in by_words.items():
                    rows.append(_Row(text, tokens[words], None, [indices]))
                continue
            subjects = {prefix: i for i, prefix in enumerate(dict.fromkeys(prefix for prefix, _ in by_words))}
            slots = sorted(by_words, key=lambda slot: subjects[slot[0]])  # each subject's slots together
            cues = [(prefix, len(tokens[prefix]) if prefix else 0) for prefix, _ in slots]
            for part in self.prompts.pack([1 + len(tokens[words]) for _, words in slots], cues):
                prompt, markers = self.prompts.encode(Prompt(kind, tuple(slots[i][1] for i in part),
                                                             cues=tuple(slots[i][0] for i in part)), tokens)
                cue = {slots[i][0] for i in part}
                subject = subject_of[cue.pop()] if kind == RELATION and len(cue) == 1 else ""
                rows.append(_Row(text, prompt, markers, [by_words[slots[i]] for i in part], kind, subject))
        return rows

    def _count_rows(self, asks: Sequence[Ask], text: str) -> int:
        """Passes ``asks`` over ``text`` take (E007 when one of them leaves no room for the text)."""
        return len(self._rows(asks, [text] * len(asks))) if asks else 0

    def _units(self, rows: Sequence[_Row], kept: dict[str, list[tuple[int, int]]] | None = None,
               text_tokens: dict[str, TextTokens] | None = None) -> list[_Unit]:
        """Each row over each window of its text; a relation row over the windows in ``kept`` (those whose states
        an entity pass kept: the prompt then only precedes the kept states, so any prompt length fits)."""
        text_cache = {} if text_tokens is None else text_tokens  # ``text_tokens``: tokens known, and kept
        new = [text for text in dict.fromkeys(r.text for r in rows) if text not in text_cache]
        text_cache.update(zip(new, self.tokenizer.tokenize(new)))
        units = []
        max_length = self.tokenizer.max_length
        for row in rows:
            budget = max_length - len(row.prompt) - 3
            tokens = text_cache[row.text]
            windows = (kept or {}).get(row.text) if row.kind == RELATION else None
            for lo, hi in windows or plan_windows(row.text, tokens, budget):
                units.append(_Unit(row, tokens.slice(lo, hi), lo, hi))
        return units

    def _batches(self, units: list[_Unit], reusing: Sequence[bool] = ()) -> list[list[int]]:
        """Unit indices grouped by length (longest first) under batch size and token budget; units that reuse
        their text's states (``reusing``) and units that do not go to separate model calls."""
        lengths = [u.length for u in units]
        flags = list(reusing) or [False] * len(units)
        batches = []
        for kind in (False, True):
            order = sorted((i for i in range(len(units)) if flags[i] == kind), key=lambda i: -lengths[i])
            batches += pack_by_length(order, lengths, self.batch_size, self.batch_tokens, min_fill=MIN_FILL)
        return batches

    def _batch(self, units: Sequence[_Unit], states: dict[tuple[str, int, int], np.ndarray] | None):
        """The model call of ``units``: whole rows, or (``states``) prompts whose texts' states are in ``states``."""
        markers = [u.row.markers for u in units] if self.prompts else None
        pairs = [(u.row.prompt, u.text) for u in units]
        if states is None:
            return self.tokenizer.build_batch(pairs, markers=markers)
        subjects = [mentions(u.row.text, u.row.subject) for u in units] if self.mark_subject else None
        batch = self.tokenizer.build_reuse_batch(pairs, markers, subjects)
        kept = [states[u.window] for u in units]
        reused = np.zeros((len(units), batch.text_mask.shape[1], kept[0].shape[-1]), dtype=np.float32)
        for b, values in enumerate(kept):
            reused[b, : len(values)] = values
        batch.reused_states = reused
        return batch

    def _run(self, asks: _Asks, cancel: threading.Event | None = None, span_cap: int | None = None,
             passes: list[int] | None = None, keep_texts: set[str] = frozenset(),
             states: dict[tuple[str, int, int], np.ndarray] | None = None,
             text_tokens: dict[str, TextTokens] | None = None) -> list[list[tuple[int, int, float]] | None]:
        """Each ask's spans ``(start, end, probability)`` at its threshold, best first; stops between model calls
        once ``cancel`` is set (E117). An ask that finds more than ``span_cap`` spans keeps only its best ones when
        every asker reads at most that many (top_k), and else stops collecting: None (E114 for its askers).
        ``passes``: gets the number of passes run appended. ``keep_texts`` and ``states``: a ``reuse_layers``
        model's entity passes put the text states of each window of those texts in ``states``; its relation
        passes read the windows found there from them instead of running the text through those layers again.
        ``text_tokens``: texts' tokens, read and filled (one request's stages tokenize each text once)."""
        thresholds = np.asarray(asks.thresholds, dtype=np.float64)
        prunable = [span_cap is not None and need is not None and need <= span_cap for need in asks.needs]
        found: list[dict[tuple[int, int], float] | None] = [dict() for _ in asks.asks]
        if not asks.asks:
            return []
        rows = self._rows(asks.asks, asks.texts)
        if passes is not None:
            passes.append(len(rows))
        kept: dict[str, list[tuple[int, int]]] = {}
        for text, lo, hi in states or ():
            kept.setdefault(text, []).append((lo, hi))
        units = self._units(rows, kept, text_tokens)
        width = self.config.max_span_width
        lowest = float(thresholds.min())
        thr_logit = logit(lowest) if lowest > 0 else -1e4
        reusing = [bool(states) and u.row.kind == RELATION and u.window in states for u in units]
        for batch_ids in self._batches(units, reusing):
            if cancel is not None and cancel.is_set():
                raise HugieError("E117")
            alive_units = [i for i in batch_ids  # an ask that overflowed needs no more work
                           if any(found[a] is not None for slot in units[i].row.slot_asks for a in slot)]
            if not alive_units:
                continue
            batch_units = [units[i] for i in alive_units]
            batch = self._batch(batch_units, states if reusing[alive_units[0]] else None)
            keeping = [u.row.text in keep_texts for u in batch_units] if keep_texts and states is not None else []
            if any(keeping):
                spans, logits, lower = self.backend.score(batch, thr_logit, width, keep_states=True)
                for b, unit in enumerate(batch_units):
                    start = len(unit.row.prompt) + 2
                    if keeping[b] and unit.window not in states:  # the text's tokens and its </s>
                        states[unit.window] = np.array(lower[b, start:start + len(unit.text) + 1])
            else:
                spans, logits = self.backend.score(batch, thr_logit, width)
            if len(spans) == 0:
                continue
            b_idx, ask_of, spans, logits = self._spans_per_ask(batch_units, spans, logits)
            probs = sigmoid(logits)
            starts = batch.char_starts[spans[:, 0], spans[:, 2]]
            ends = batch.char_ends[spans[:, 0], spans[:, 3]]
            keep = (starts >= 0) & (ends > starts) & (probs >= thresholds[ask_of])
            if span_cap is not None:  # one window's spans are distinct: more than the cap overflows its ask
                pairs, counts = np.unique(np.stack([b_idx[keep], ask_of[keep]], axis=1), axis=0, return_counts=True)
                for _, a in pairs[counts > span_cap]:
                    if not prunable[a]:
                        found[a] = None
                alive = np.array([f is not None for f in found], dtype=bool)
                keep &= alive[ask_of]
            for index, s, e, p in zip(ask_of[keep], starts[keep], ends[keep], probs[keep]):
                spans_of = found[index]
                key = (int(s), int(e))
                if spans_of is None or p <= spans_of.get(key, -1.0):
                    continue
                if span_cap is not None and key not in spans_of and len(spans_of) >= span_cap:
                    if not prunable[index]:
                        found[index] = None  # overflowed: the requests asking it get E114
                        continue
                    if len(spans_of) >= 2 * span_cap:  # its askers read at most span_cap: keep the best
                        found[index] = spans_of = dict(sorted(spans_of.items(), key=lambda kv: -kv[1])[:span_cap])
                spans_of[key] = float(p)
        return [None if f is None else
                [(s, e, min(1.0, p)) for (s, e), p in sorted(f.items(), key=lambda kv: (-kv[1], kv[0]))]
                for f in found]

    @staticmethod
    def _spans_per_ask(units: Sequence[_Unit], spans: np.ndarray, logits: np.ndarray):
        """Span rows (batch, slot, start, end) repeated once per ask their slot answers: (batch index, ask index,
        spans, logits), each of the same length."""
        slots = max(len(u.row.slot_asks) for u in units)
        counts = np.zeros((len(units), slots), dtype=np.int64)
        offsets = np.zeros((len(units), slots), dtype=np.int64)
        flat: list[int] = []
        for b, unit in enumerate(units):
            for k, owners in enumerate(unit.row.slot_asks):
                offsets[b, k], counts[b, k] = len(flat), len(owners)
                flat.extend(owners)
        per_row = counts[spans[:, 0], spans[:, 1]]
        repeat = np.repeat(np.arange(len(spans)), per_row)
        within = np.arange(len(repeat)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        ask_of = np.asarray(flat, dtype=np.int64)[offsets[spans[repeat, 0], spans[repeat, 1]] + within]
        return spans[repeat, 0], ask_of, spans[repeat], logits[repeat]

    # ------------------------------------------------------------------ wrappers
    def extract(self, instruction, text: str | None = None, *, threshold: float | None = None,
                top_k: int | None = None):
        """Spans answering ``instruction`` in ``text``; or, given a list of (instruction, text)
        pairs, one list of spans per pair in the same order."""
        options = dict(threshold=threshold, top_k=top_k)
        if text is None and isinstance(instruction, (list, tuple)):
            if not all(isinstance(item, (list, tuple)) and len(item) == 2 for item in instruction):
                raise HugieError("E008")
            results = self.run([request_dict(instruction=i, text=t, **options) for i, t in instruction])
            return [r.spans for r in results]
        if text is None:
            raise HugieError("E008")
        return self.run([request_dict(instruction=instruction, text=text, **options)])[0].spans

    def extract_entities(self, text: str, types: Sequence[str], *, threshold: float | None = None,
                         top_k: int | None = None, language: str | None = None,
                         one_type_per_span: bool | None = None,
                         flat_ner: bool | None = None) -> dict[str, list[Span]]:
        """``{type: spans}`` for each entity type; with ``one_type_per_span`` (default: the model's) a span
        found for several types stays only under its best-scoring one; with ``flat_ner`` no two spans overlap."""
        if isinstance(types, str) or not isinstance(types, (list, tuple)):
            raise HugieError("E009", value=types)
        request = request_dict(text=text, entities=list(types), threshold=threshold, top_k=top_k, language=language,
                           one_type_per_span=one_type_per_span, flat_ner=flat_ner)
        return self.run([request])[0].entities

    def extract_schema(self, text: str, schema: dict | Schema, *, threshold: float | None = None,
                       top_k: int | None = None, language: str | None = None,
                       one_type_per_span: bool | None = None, flat_ner: bool | None = None,
                       relation_threshold: float | None = None) -> SchemaResult:
        """Entities and relation triples for a schema (``{"entities": [...], "relations": [{"subject",
        "predicate", "object"?}]}``).

        Entity types (including relation subject types) run as one batched pass; then one batched
        pass asks each relation of each found subject, at :meth:`relation_threshold`. ``flat_ner`` and
        one type per span shape the entity list only: relation subjects are every span of their type's
        own pass (taking them after that decoding cost DuIE 1 dev 11 points of recall, F1 64.0 → 61.5).
        """
        request = request_dict(text=text, schema=schema, threshold=threshold, top_k=top_k, language=language,
                           one_type_per_span=one_type_per_span, flat_ner=flat_ner,
                           relation_threshold=relation_threshold)
        return self.run([request])[0]

    def info(self) -> dict:
        from . import __version__

        return {"hugie": __version__, "model": self.model_path, "max_span_width": self.config.max_span_width,
                "threshold": self.config.threshold, "relation_threshold": self.relation_threshold(),
                "one_type_per_span": self.one_type_per_span(), "flat_ner": self.flat_ner(),
                "max_length": self.config.max_seq_length, "architecture": self.config.architecture,
                "max_slots": self.prompts.max_slots if self.prompts else 1, "reuse_layers": self.reuse_layers,
                "mark_subject": self.mark_subject, "vocab_size": self.tokenizer.vocab_size, **self.backend.describe()}
