"""Service settings: ``HUGIE_*`` environment variables, overridable by ``hugie serve`` options."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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

    # limits
    max_text_chars: int = Field(100_000, ge=1)
    max_instruction_chars: int = Field(512, ge=1)
    max_batch_items: int = Field(64, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 503 overload responses.")

    # security / http
    api_key: SecretStr | None = Field(None, description="When set, /extract* and /info need it.")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         description="Comma-separated allowed origins.")

    # process
    host: str = "127.0.0.1"
    port: int = 8000
    graceful_timeout_s: float = Field(30.0, ge=0, description="How long shutdown waits for in-flight work.")
    log_level: str = "info"

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
