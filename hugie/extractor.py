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
from .limits import RequestLimits, first_passes
from .scoring import logit, sigmoid
from .tokenization import HugieTokenizer, TextTokens, pack_by_length
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


@dataclass
class _Unit:
    """One encoder row: a pass (instruction, text) restricted to one window of the text."""

    pass_index: int
    instruction: TextTokens
    text: TextTokens

    @property
    def length(self) -> int:
        return len(self.instruction) + len(self.text) + 3


def count_spans(result: ExtractResult) -> int:
    """Spans in one answer: spans, entities of every type, or entities plus relations."""
    if isinstance(result, SpansResult):
        return len(result.spans)
    if isinstance(result, EntitiesResult):
        return sum(len(v) for v in result.entities.values())
    return len(result.entities) + len(result.relations)


class _Passes:
    """Distinct (instruction, text, threshold) passes: requests asking the same share one."""

    def __init__(self):
        self.index: dict[tuple[str, str, float, bool], int] = {}
        self.pairs: list[tuple[str, str]] = []
        self.thresholds: list[float] = []
        self.needs: list[int | None] = []  # the most spans an asker reads (its top_k); None: every span

    def add(self, instruction: str, text: str, threshold: float, top_k: int | None = None) -> int:
        # askers of every span and askers of their top k do not share: a pass over the span cap fails the
        # first and answers the second, whatever else shares a call
        key = (instruction, text, threshold, top_k is None)
        if key not in self.index:
            self.index[key] = len(self.pairs)
            self.pairs.append((instruction, text))
            self.thresholds.append(threshold)
            self.needs.append(top_k)
        i = self.index[key]
        if top_k is not None:  # the key keeps askers of every span (need None) apart
            self.needs[i] = max(self.needs[i], top_k)
        return i


class _RequestPlan:
    """One request's passes and decoding: entity (or instruction) passes, then relation passes."""

    def __init__(self, request: ExtractRequest, extractor: Extractor):
        self.request, self.extractor = request, extractor
        self.threshold = extractor._check_threshold(request.threshold)
        self.top_k = request.top_k
        self.schema = request.schema_
        self.tmpl = None if request.mode == "instruction" else extractor._templates(request.text, request.language)
        self.asked: dict[str | None, int] = {}  # entity type (None: the instruction) -> pass index
        self.spans: dict[str | None, list[Span]] = {}
        self.relation_asks: list[tuple[RelationSchema, Entity, int]] = []
        self.error: HugieError | None = None

    def check(self, limits: RequestLimits | None) -> None:
        """What can be checked before any model work: instruction lengths (E007) and ``limits``."""
        instructions = self.entity_instructions()
        self.extractor.check_instructions(list(instructions.values()))
        if limits is not None:
            limits.check_request(self.request, len(instructions))

    def entity_instructions(self) -> dict[str | None, str]:
        r = self.request
        if r.mode == "instruction":
            return {None: r.instruction}
        if r.mode == "entities":
            types = r.entities
        else:
            types = self.schema.entities + [x.subject for x in self.schema.relations]
        return {t: self.tmpl.for_entity(t) for t in dict.fromkeys(types)}

    def ask_entities(self, passes: _Passes) -> None:
        self.asked = {name: passes.add(instruction, self.request.text, self.threshold, self.top_k)
                      for name, instruction in self.entity_instructions().items()}

    def _spans(self, found: list[tuple[int, int, float]] | None, threshold: float,
               span_cap: int | None = None) -> list[Span]:
        if found is None:
            raise HugieError("E114", field="request", value=f"more than {span_cap}", limit=span_cap)
        text = self.request.text
        kept = [(s, e, p) for s, e, p in found if p >= threshold][:self.top_k]
        return [Span(text=text[s:e], start=s, end=e, score=p) for s, e, p in kept]

    def take_entities(self, found: list, span_cap: int | None = None) -> None:
        self.spans = {name: self._spans(found[i], self.threshold, span_cap) for name, i in self.asked.items()}

    def ask_relations(self, passes: _Passes, limits: RequestLimits | None = None) -> None:
        """Add one pass per (relation, subject found); checked against ``limits`` before any is added."""
        if self.schema is None or not self.schema.relations:
            return
        r = self.request
        self.object_threshold = self.extractor.relation_threshold(r.threshold, r.relation_threshold)
        asks = []
        for rel in self.schema.relations:
            subjects = self.spans.get(rel.subject, [])
            if limits is not None:
                limits.check_subjects(f"{rel.subject} {rel.predicate}", len(subjects))
            asks += [(rel, subj, self.tmpl.for_relation(subj.text, rel.predicate)) for subj in subjects]
        instructions = list(dict.fromkeys(instruction for _, _, instruction in asks))
        if limits is not None:
            limits.check_work(len(instructions), len(r.text))
        self.extractor.check_instructions(instructions)
        for rel, subj, instruction in asks:
            index = passes.add(instruction, r.text, self.object_threshold, self.top_k)
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
        self._instruction_tokens: dict[str, TextTokens] = {}  # see check_instructions
        self._instruction_lock = threading.Lock()

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

    # ------------------------------------------------------------------ the one batched entry point
    def run(self, requests: Sequence[ExtractRequest | dict], *, limits: RequestLimits | None = None,
            cancel: threading.Event | None = None, return_errors: bool = False,
            stats: dict | None = None) -> list[ExtractResult]:
        """One result per request, in order: :class:`SpansResult` for an instruction,
        :class:`EntitiesResult` for entity types, :class:`SchemaResult` for a schema.

        Every request is validated (and checked against ``limits``) before any work starts. The passes
        of all requests — instruction and entity-type passes first, then the relation passes of the
        subjects they found — are deduplicated, packed across documents into model calls, and decoded
        per request. ``return_errors``: a request that fails gets its :class:`HugieError` in its place
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
        entity_passes = _Passes()
        for plan in live:
            plan.ask_entities(entity_passes)
        span_cap = limits.max_spans if limits is not None else None
        found = self._run(entity_passes, cancel, span_cap)
        relation_passes = _Passes()
        for plan in live:
            try:
                plan.take_entities(found, span_cap)
                plan.ask_relations(relation_passes, limits)
            except HugieError as exc:
                if not return_errors:
                    raise
                plan.error = exc
        found = self._run(relation_passes, cancel, span_cap)
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
            stats["passes"] = len(entity_passes.pairs) + len(relation_passes.pairs)
        return results

    def check_instructions(self, instructions: Sequence[str]) -> dict[str, TextTokens]:
        """The tokens of each distinct instruction; E007 unless every one leaves room for at least 8 text tokens.
        Cached: the same entity types and instructions come back request after request, and a request's are
        checked before it queues, before its work, and read again when its passes are built."""
        with self._instruction_lock:
            known = {i: self._instruction_tokens.get(i) for i in dict.fromkeys(instructions)}
        new = [i for i, tokens in known.items() if tokens is None]
        if new:
            known.update(zip(new, self.tokenizer.tokenize(new)))
            with self._instruction_lock:
                if len(self._instruction_tokens) + len(new) > INSTRUCTION_CACHE:
                    self._instruction_tokens.clear()
                self._instruction_tokens.update((i, known[i]) for i in new)
        max_length = self.tokenizer.max_length
        for tokens in known.values():
            if max_length - len(tokens) - 3 < 8:
                raise HugieError("E007", length=len(tokens), limit=max_length - 11, max_length=max_length)
        return known

    def passes(self, request: ExtractRequest | dict) -> int:
        """Encoder passes a request asks for before any relation pass (what a cost check can count
        up front: 1 for an instruction, one per entity type, one per entity and subject type)."""
        return first_passes(as_request(request))

    def instructions(self, request: ExtractRequest | dict) -> list[str]:
        """The instructions of a request's first passes (its instruction, or one per entity and subject type)."""
        return list(_RequestPlan(as_request(request), self).entity_instructions().values())

    # ------------------------------------------------------------------ model calls
    def _units(self, pairs: Sequence[tuple[str, str]]) -> list[_Unit]:
        instr_cache = self.check_instructions([p[0] for p in pairs])
        uniq_text = list(dict.fromkeys(p[1] for p in pairs))
        text_cache = dict(zip(uniq_text, self.tokenizer.tokenize(uniq_text)))
        units = []
        max_length = self.tokenizer.max_length
        for index, (instruction, text) in enumerate(pairs):
            ins = instr_cache[instruction]
            budget = max_length - len(ins) - 3
            tokens = text_cache[text]
            for lo, hi in plan_windows(text, tokens, budget):
                units.append(_Unit(index, ins, tokens.slice(lo, hi)))
        return units

    def _batches(self, units: list[_Unit]) -> list[list[int]]:
        """Unit indices grouped by length (longest first) under batch size and token budget."""
        lengths = [u.length for u in units]
        order = sorted(range(len(units)), key=lambda i: -lengths[i])
        return pack_by_length(order, lengths, self.batch_size, self.batch_tokens, min_fill=MIN_FILL)

    def _run(self, passes: _Passes, cancel: threading.Event | None = None,
             span_cap: int | None = None) -> list[list[tuple[int, int, float]] | None]:
        """Each pass's spans ``(start, end, probability)`` at its threshold, best first; stops between model calls
        once ``cancel`` is set (E117). A pass that finds more than ``span_cap`` spans keeps only its best ones when
        every asker reads at most that many (top_k), and else stops collecting: None (E114 for its askers)."""
        pairs, thresholds = passes.pairs, passes.thresholds
        prunable = [span_cap is not None and need is not None and need <= span_cap for need in passes.needs]
        found: list[dict[tuple[int, int], float]] = [dict() for _ in pairs]
        if not pairs:
            return []
        units = self._units(pairs)
        width = self.config.max_span_width
        lowest = min(thresholds)
        thr_logit = logit(lowest) if lowest > 0 else -1e4
        for batch_ids in self._batches(units):
            if cancel is not None and cancel.is_set():
                raise HugieError("E117")
            batch_ids = [i for i in batch_ids if found[units[i].pass_index] is not None]  # overflowed: no more work
            if not batch_ids:
                continue
            batch = self.tokenizer.build_batch([(units[i].instruction, units[i].text) for i in batch_ids])
            rows, logits = self.backend.score(batch, thr_logit, width)
            if len(rows) == 0:
                continue
            probs = sigmoid(logits)
            starts = batch.char_starts[rows[:, 0], rows[:, 1]]
            ends = batch.char_ends[rows[:, 0], rows[:, 2]]
            pass_of_row = np.array([units[i].pass_index for i in batch_ids])[rows[:, 0]]
            keep = (starts >= 0) & (ends > starts) & (probs >= np.asarray(thresholds)[pass_of_row])
            if span_cap is not None:  # one window's spans are distinct: more than the cap overflows its pass
                per_window = np.bincount(rows[keep, 0], minlength=len(batch_ids))
                for b in np.flatnonzero(per_window > span_cap):
                    if not prunable[units[batch_ids[b]].pass_index]:
                        found[units[batch_ids[b]].pass_index] = None
                alive = np.array([spans is not None for spans in found], dtype=bool)
                keep &= alive[pass_of_row]
            for index, s, e, p in zip(pass_of_row[keep], starts[keep], ends[keep], probs[keep]):
                spans = found[index]
                key = (int(s), int(e))
                if spans is None or p <= spans.get(key, -1.0):
                    continue
                if span_cap is not None and key not in spans and len(spans) >= span_cap:
                    if not prunable[index]:
                        found[index] = None  # overflowed: the requests asking it get E114
                        continue
                    if len(spans) >= 2 * span_cap:  # its askers read at most span_cap: keep the best
                        found[index] = spans = dict(sorted(spans.items(), key=lambda kv: -kv[1])[:span_cap])
                spans[key] = float(p)
        return [None if spans is None else
                [(s, e, min(1.0, p)) for (s, e), p in sorted(spans.items(), key=lambda kv: (-kv[1], kv[0]))]
                for spans in found]

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
                "max_length": self.config.max_seq_length,
                "vocab_size": self.tokenizer.vocab_size, **self.backend.describe()}
