"""Typed results and requests (pydantic v2), shared by the library, the service and the SDK."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from .errors import HugieError


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


class RelationSchema(BaseModel):
    subject: str
    predicate: str
    object: str | None = None


class Schema(BaseModel):
    """Entity types and relations to extract in one call."""

    entities: list[str] = Field(default_factory=list)
    relations: list[RelationSchema] = Field(default_factory=list)
    one_type_per_span: bool | None = Field(None, description=(
        "A span found for several entity types keeps only its best-scoring type (for flat, exclusive "
        "type sets); false keeps it under every type. Default: the model's."))
    flat_ner: bool | None = Field(None, description=(
        "No two entities overlap, across types or nested within one: the best-scoring span wins "
        "(GLiNER's flat_ner; implies one type per span). Default: the model's, unless one_type_per_span "
        "is false."))
    relation_threshold: float | None = Field(None, ge=0.0, le=1.0, description=(
        "Score threshold for relation objects. Default: the request's threshold if given, else the "
        "model's relation threshold."))


def validate_schema(data: dict) -> Schema:
    """A :class:`Schema` from a plain dict; a bad field value raises E026 naming the field."""
    try:
        schema = Schema.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise HugieError("E026", details=details) from None
    if schema.flat_ner and schema.one_type_per_span is False:
        raise HugieError("E027")
    return schema


class SchemaResult(BaseModel):
    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)


# ---------------------------------------------------------------------- service requests / responses
# Shared by the HTTP service (``hugie.api``) and the SDK (``hugie.client``).


class ExtractRequest(BaseModel):
    """One extraction: ``instruction`` + ``text``, or ``text`` + ``schema`` (exactly one of the two)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    text: str
    instruction: str | None = None
    schema_: Schema | None = Field(None, alias="schema", description="Entity types and relations.")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Default: the model's threshold.")
    top_k: int | None = Field(None, ge=1, description="Keep at most this many spans per instruction.")

    @model_validator(mode="after")
    def _one_task(self) -> "ExtractRequest":
        if (self.instruction is None) == (self.schema_ is None):
            raise ValueError("give exactly one of 'instruction' or 'schema'")
        if self.instruction is not None and not self.instruction.strip():
            raise ValueError("instruction must be a non-empty string")
        if self.schema_ is not None and not (self.schema_.entities or self.schema_.relations):
            raise ValueError("schema must have non-empty 'entities' and/or 'relations'")
        return self


class SpanResponse(BaseModel):
    """The answer to an instruction."""

    spans: list[Span]


class SchemaResponse(SchemaResult):
    """The answer to a schema: entities and relation triples."""


def _response_kind(value: Any) -> str:
    has_spans = "spans" in value if isinstance(value, dict) else hasattr(value, "spans")
    return "spans" if has_spans else "schema"


ExtractResponse = Annotated[
    Union[Annotated[SpanResponse, Tag("spans")], Annotated[SchemaResponse, Tag("schema")]],
    Discriminator(_response_kind),
]


class BatchRequest(BaseModel):
    """Several extractions in one call; results come back in the same order."""

    model_config = ConfigDict(extra="forbid")

    items: list[ExtractRequest] = Field(min_length=1)


class BatchResponse(BaseModel):
    results: list[ExtractResponse]


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    """Every error response of the service: ``{"error": {"code", "message", "request_id"}}``."""

    error: ErrorDetail
