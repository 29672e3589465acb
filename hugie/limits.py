"""What one request may cost, checked before its work starts (the service sets these from its settings).

The model's work is counted in passes (one encoder pass of the text per entity type, instruction or
(subject, predicate)) times the characters of the text; the answer in spans. A request over any limit
gets its own catalogued error naming the limit, the value and the setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import HugieError

#: HTTP status of each limit's error (413: too much asked; 422: a setting that cannot be served)
LIMIT_STATUS = {"E112": 413, "E113": 413, "E114": 413, "E115": 422, "E116": 413}


@dataclass(frozen=True)
class RequestLimits:
    """Caps on one request. ``None`` leaves a cap off."""

    max_entity_types: int | None = None      # entity types of an entity-type or schema request
    max_relations: int | None = None         # relations of a schema
    max_subjects: int | None = None          # subjects asked per relation (each costs a pass)
    max_spans: int | None = None             # spans in one answer (entities, objects)
    min_subject_threshold: float | None = None  # lowest threshold a schema with relations may ask
    max_pass_chars: int | None = None        # passes x characters of one request, per stage

    def check_request(self, request, passes: int, field: str = "request") -> None:
        """Checks that need no model work: type and relation counts, the subject floor, the first stage's work."""
        types = request.entities or (request.schema_.entities if request.schema_ is not None else [])
        relations = request.schema_.relations if request.schema_ is not None else []
        _cap(len(types), self.max_entity_types, field, "entity types", "HUGIE_MAX_ENTITY_TYPES")
        _cap(len(relations), self.max_relations, field, "relations", "HUGIE_MAX_RELATIONS")
        floor = self.min_subject_threshold
        if relations and floor is not None and request.threshold is not None and request.threshold < floor:
            raise HugieError("E115", field=field, value=request.threshold, limit=floor)
        self.check_work(passes, len(request.text), field)

    def check_subjects(self, relation: str, subjects: int, field: str = "request") -> None:
        if self.max_subjects is not None and subjects > self.max_subjects:
            raise HugieError("E113", field=field, relation=relation, value=subjects, limit=self.max_subjects)

    def check_work(self, passes: int, chars: int, field: str = "request") -> None:
        work = passes * max(1, chars)
        if self.max_pass_chars is not None and work > self.max_pass_chars:
            raise HugieError("E116", field=field, passes=passes, chars=chars, value=work, limit=self.max_pass_chars)

    def check_spans(self, spans: int, field: str = "request") -> None:
        if self.max_spans is not None and spans > self.max_spans:
            raise HugieError("E114", field=field, value=spans, limit=self.max_spans)


def first_passes(request) -> int:
    """Passes a request asks for before any relation pass: 1 for an instruction, else one per distinct
    entity type (a schema's subject types included)."""
    if request.instruction is not None:
        return 1
    if request.entities is not None:
        return len(set(request.entities))
    return len(set(request.schema_.entities) | {r.subject for r in request.schema_.relations})


def _cap(value: int, limit: int | None, field: str, what: str, setting: str) -> None:
    if limit is not None and value > limit:
        raise HugieError("E112", field=field, value=value, what=what, limit=limit, setting=setting)
