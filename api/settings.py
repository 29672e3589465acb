"""Service settings: ``HUGIE_*`` environment variables, overridable by ``hugie serve`` options."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hugie.limits import RequestLimits


class Settings(BaseSettings):
    """Everything the service can be told; e.g. ``HUGIE_MAX_BATCH=16``, ``HUGIE_API_KEY=...``."""

    model_config = SettingsConfigDict(env_prefix="HUGIE_", extra="ignore")

    # model
    model: str | None = Field(None, description="Model dir or hub id (default: the embedded model).")
    backend: str = "auto"
    device: str = "auto"
    warmup: bool = Field(True, description="Run one extraction before reporting ready.")

    # dynamic micro-batching
    max_batch: int = Field(32, ge=1, description="Most (instruction, text) passes gathered into one call.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long the first request waits for company.")
    max_queue: int = Field(1024, ge=1, description="Queued passes beyond which requests get 503.")
    executor_threads: int = Field(1, ge=1, description="Threads running the model.")
    fast_lane_chars: int = Field(1_000, ge=0, description=(
        "Requests of at most this many passes x characters (relations counted at HUGIE_MAX_SUBJECTS subjects "
        "each) run on a model thread of their own, so they never wait behind a long one; 0 turns it off."))

    # limits: what one request may cost (docs/reliability.md, "Limits that fit", says how they were sized)
    max_text_chars: int = Field(20_000, ge=1, description="Characters of one text.")
    max_instruction_chars: int = Field(256, ge=1, description=(
        "Characters of an instruction, entity type or predicate (short enough to leave the text room)."))
    max_entity_types: int = Field(64, ge=1, description="Entity types of one request (entity types or schema).")
    max_relations: int = Field(64, ge=1, description="Relations of one schema.")
    max_subjects: int = Field(32, ge=1, description="Subjects found per relation; each costs one pass.")
    max_spans: int = Field(2_000, ge=1, description="Spans in one answer (entities and relations).")
    min_subject_threshold: float = Field(0.05, ge=0, le=1, description=(
        "Lowest threshold a schema with relations may ask (every subject found costs a pass)."))
    max_pass_chars: int = Field(100_000, ge=1, description=(
        "Model work of one request and stage: passes x text characters."))
    max_batch_items: int = Field(64, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503 overload responses.")

    # security / http
    api_key: SecretStr | None = Field(None, description="When set, /extract* and /info need it.")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="Comma-separated allowed origins.")
    ui: bool = Field(True, description="Serve the demo page at /ui (and redirect / to it).")

    # process
    host: str = "127.0.0.1"
    port: int = 8000
    graceful_timeout_s: float = Field(30.0, ge=0, description="How long shutdown waits for in-flight work.")
    log_level: str = "info"

    def request_limits(self) -> RequestLimits:
        """The caps every request is held to before its model work starts."""
        return RequestLimits(max_entity_types=self.max_entity_types, max_relations=self.max_relations,
                             max_subjects=self.max_subjects, max_spans=self.max_spans,
                             min_subject_threshold=self.min_subject_threshold, max_pass_chars=self.max_pass_chars)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value):
        return None if value == "" else value
