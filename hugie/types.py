"""Typed results and requests (pydantic v2), shared by the library, the service and the SDK."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .errors import HugieError

#: names and instructions hold a non-space character: stated in the JSON schema, checked by the validators
#: (pydantic's own string constraints would also reject a lone surrogate, which the tokenizer handles)
NON_BLANK = {"minLength": 1, "pattern": r"\S"}


class Span(BaseModel):
    """A span of the caller's text: ``text == original[start:end]``; score in [0, 1]."""

    model_config = ConfigDict(frozen=True)

    text: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    score: float = Field(ge=0.0, le=1.0)


class Entity(Span):
    """A span with the entity type that was asked for."""

    type: str


class Relation(BaseModel):
    """A (subject, predicate, object) triple; score = subject score × object score."""

    model_config = ConfigDict(frozen=True)

    subject: Entity
    predicate: str
    object: Entity
    score: float = Field(ge=0.0, le=1.0)


def _blank(value: str) -> bool:
    return not value.strip()


def _custom(code: str, **ctx) -> PydanticCustomError:
    """A validation error carrying a catalogue code and message (``request_error`` turns it back)."""
    return PydanticCustomError(code, HugieError(code, **ctx).message, ctx)


class RelationSchema(BaseModel):
    """One relation of a schema: every span of type ``subject`` is asked for its ``predicate``."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(json_schema_extra=NON_BLANK, description="Entity type of the subject.")
    predicate: str = Field(json_schema_extra=NON_BLANK)
    object: str | None = Field(None, json_schema_extra=NON_BLANK,
                               description="Entity type given to the objects found (a label only).")

    @field_validator("subject", "predicate", "object", mode="before")
    @classmethod
    def _not_blank(cls, value: Any, info) -> Any:
        if isinstance(value, str) and _blank(value):
            if info.field_name == "predicate":
                raise _custom("E006", item=f"a blank predicate {value!r}")
            raise _custom("E009", value=f"{info.field_name} {value!r}")
        return value


class Schema(BaseModel):
    """Entity types and relations to extract in one request."""

    model_config = ConfigDict(extra="forbid")

    entities: list[str] = Field(default_factory=list, description="Entity types.")
    relations: list[RelationSchema] = Field(default_factory=list)

    @field_validator("entities")
    @classmethod
    def _named_types(cls, value: list[str]) -> list[str]:
        if any(_blank(t) for t in value):
            raise _custom("E009", value=value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Schema:
        if not (self.entities or self.relations):
            raise _custom("E005", keys=[k for k in ("entities", "relations") if k in self.model_fields_set])
        return self


#: decoding options a schema file may still carry; requests take them at the top level
SCHEMA_FILE_OPTIONS = ("one_type_per_span", "flat_ner", "relation_threshold")
MODES = ("instruction", "entities", "schema")
_MODE_OPTIONS = {"one_type_per_span": ("entities", "schema"), "flat_ner": ("entities", "schema"),
                 "relation_threshold": ("schema",), "language": ("entities", "schema")}


class ExtractRequest(BaseModel):
    """One document and one task: an ``instruction``, a list of entity types (``entities``) or a
    ``schema`` — exactly one of the three — with the decoding options of that mode."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra={
        "oneOf": [{"required": ["instruction"]}, {"required": ["entities"]}, {"required": ["schema"]}]})

    text: str
    instruction: str | None = Field(None, json_schema_extra=NON_BLANK,
                                    description="e.g. 找到文章中所有【人名】类型的实体？")
    entities: list[str] | None = Field(None, min_length=1, description="Entity types, e.g. [\"人名\", \"公司\"].")
    schema_: Schema | None = Field(None, alias="schema", description="Entity types and relations.")
    threshold: float | None = Field(None, ge=0.0, le=1.0, strict=True, description="Default: the model's threshold.")
    top_k: int | None = Field(None, ge=1, strict=True, description="Keep at most this many spans per instruction pass.")
    language: Literal["zh", "en"] | None = Field(None, description=(
        "Instruction language for entity types and schemas. Default: zh when the text has CJK ideographs."))
    one_type_per_span: bool | None = Field(None, strict=True, description=(
        "Entities and schemas: a span found for several types keeps only its best-scoring type; false keeps "
        "it under every type. Default: the model's."))
    flat_ner: bool | None = Field(None, strict=True, description=(
        "Entities and schemas: no two entities overlap (the best-scoring span wins; implies one type per "
        "span). Default: the model's, unless one_type_per_span is false."))
    relation_threshold: float | None = Field(None, ge=0.0, le=1.0, strict=True, description=(
        "Schemas: score threshold for relation objects. Default: threshold if given, else the model's "
        "relation threshold."))

    @model_validator(mode="before")
    @classmethod
    def _lift_schema_options(cls, data: Any) -> Any:
        """Schema files may carry the decoding options (``{"entities": [...], "flat_ner": true}``):
        they move to the request, where they belong."""
        if not isinstance(data, dict) or not isinstance(data.get("schema"), dict):
            return data
        schema = dict(data["schema"])
        moved = {k: schema.pop(k) for k in SCHEMA_FILE_OPTIONS if k in schema}
        if not moved:
            return data
        data = {**data, "schema": schema}
        for key, value in moved.items():
            if data.get(key) is not None and data[key] != value:
                raise _custom("E029", details=f"{key} is given twice: {data[key]!r}, and {value!r} in the schema")
            data[key] = value
        return data

    @field_validator("top_k", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        """JSON's 3.0 is the integer 3 (as JSON Schema reads it); strings and booleans stay errors."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("instruction", mode="before")
    @classmethod
    def _instruction_not_blank(cls, value: Any) -> Any:
        if isinstance(value, str) and _blank(value):
            raise _custom("E002")
        return value

    @field_validator("entities")
    @classmethod
    def _named_types(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(_blank(t) for t in value):
            raise _custom("E009", value=value)
        return value

    @model_validator(mode="after")
    def _one_mode(self) -> ExtractRequest:
        given = [m for m in MODES if getattr(self, "schema_" if m == "schema" else m) is not None]
        if len(given) != 1:
            raise _custom("E029", details="give exactly one of 'instruction', 'entities' or 'schema' (got "
                                          f"{', '.join(given) or 'none'})")
        for option, modes in _MODE_OPTIONS.items():
            if getattr(self, option) is not None and given[0] not in modes:
                raise _custom("E029", details=f"{option} applies to {' and '.join(modes)} requests, not to "
                                              f"{'an' if given[0] == 'instruction' else 'a'} {given[0]} request")
        if self.flat_ner and self.one_type_per_span is False:
            raise _custom("E027")
        return self

    @property
    def mode(self) -> str:
        """``instruction``, ``entities`` or ``schema``."""
        return "instruction" if self.instruction is not None else "entities" if self.entities is not None \
            else "schema"


class SpansResult(BaseModel):
    """The answer to an instruction: spans, best first."""

    spans: list[Span]


class EntitiesResult(BaseModel):
    """The answer to a list of entity types: ``{type: spans}``, every type asked for present."""

    entities: dict[str, list[Span]]


class SchemaResult(BaseModel):
    """The answer to a schema: typed entities and relation triples."""

    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)


def _result_kind(value: Any) -> str:
    if isinstance(value, BaseModel):
        return {SpansResult: "spans", EntitiesResult: "entities"}.get(type(value), "schema")
    if isinstance(value, dict):
        if "spans" in value:
            return "spans"
        return "schema" if "relations" in value or isinstance(value.get("entities"), list) else "entities"
    return "schema"


ExtractResult = Annotated[
    Union[Annotated[SpansResult, Tag("spans")], Annotated[EntitiesResult, Tag("entities")],
          Annotated[SchemaResult, Tag("schema")]],
    Discriminator(_result_kind),
]


def request_error(exc: ValidationError) -> HugieError:
    """The catalogued error for an invalid request (the first problem decides the code)."""
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ())]
    field = loc[0] if loc else ""
    details = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors())
    if re.fullmatch(r"E\d{3}", err["type"]):  # raised by our own validators, with its catalogue message
        return HugieError(err["type"], **(err.get("ctx") or {}))
    if field == "text":
        return HugieError("E001", type=type(err.get("input")).__name__)
    if field == "instruction":
        return HugieError("E002")
    if field in ("threshold", "relation_threshold"):
        return HugieError("E003", value=err.get("input"))
    if field == "top_k":
        return HugieError("E004", value=err.get("input"))
    if field == "entities":
        return HugieError("E009", value=err.get("input"))
    if field == "language":
        return HugieError("E018", language=err.get("input"), choices="zh, en")
    if field == "schema":
        if len(loc) >= 4 and loc[1] == "relations" and err["type"] == "missing":
            return HugieError("E006", item=err.get("input"))
        if err["type"] == "extra_forbidden" and len(loc) == 2:
            return HugieError("E005", keys=[loc[1]])
        if len(loc) >= 4 and loc[1] == "relations" or len(loc) >= 2 and loc[1] == "entities":
            return HugieError("E009", value=repr(err.get("input")))
        if err["type"] == "model_type":
            given = err.get("input")
            return HugieError("E005", keys=sorted(given) if isinstance(given, dict) else type(given).__name__)
        return HugieError("E026", details=details)
    return HugieError("E029", details=details)


def request_dict(**fields) -> dict:
    """Request fields from keyword arguments: ``text`` when given (even None, so its error names it), every other
    field only when it is not None (an option left unset)."""
    return {k: v for k, v in fields.items() if v is not None or k == "text"}


def as_request(item: ExtractRequest | dict) -> ExtractRequest:
    """A validated :class:`ExtractRequest` from a request or a plain dict (catalogued errors)."""
    if isinstance(item, ExtractRequest):
        return item
    if not isinstance(item, dict):
        raise HugieError("E029", details=f"a request is a dict or an ExtractRequest, got {type(item).__name__}")
    try:
        return ExtractRequest.model_validate(item)
    except ValidationError as exc:
        raise request_error(exc) from None


class BatchRequest(BaseModel):
    """Several requests in one call, any mix of modes; results come back in the same order."""

    model_config = ConfigDict(extra="forbid")

    items: list[ExtractRequest] = Field(min_length=1)


class BatchResponse(BaseModel):
    results: list[ExtractResult]


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    """Every error response of the service: ``{"error": {"code", "message", "request_id"}}``."""

    error: ErrorDetail
