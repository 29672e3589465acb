"""The HTTP service: ``create_app()`` builds a FastAPI app around one Extractor.

Endpoints: ``POST /extract`` (an instruction, entity types or a schema), ``POST /extract/batch``,
``GET /health``, ``GET /ready``,
``GET /metrics``, ``GET /info``; OpenAPI docs at ``/docs``. The model loads (and warms up) in the
background from the lifespan, so ``/health`` answers at once and ``/ready`` turns 200 when the
model can serve. Every error response is ``{"error": {"code", "message", "request_id"}}``.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import hmac
import importlib.metadata
import logging
import os
import platform
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from hugie import __version__
from hugie.errors import HugieError
from hugie.limits import LIMIT_STATUS, first_passes
from hugie.types import BatchRequest, BatchResponse, ErrorBody, ExtractRequest, ExtractResult

from .batching import MicroBatcher
from .errors import API_MESSAGES, ApiError, error_response
from .metrics import Metrics
from .openapi import tighten
from .settings import Settings

log = logging.getLogger("hugie.api")

#: the current request's id (also in ``request.state.request_id``), for logs
request_id_var: ContextVar[str | None] = ContextVar("hugie_request_id", default=None)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CATALOGUED = re.compile(r"E\d{3}")
LINGER_S, LINGER_BYTES = 10.0, 64 * 1024 * 1024  # how long and how much of an oversize body is read and dropped
PROTECTED = ("/extract", "/extract/batch", "/info")  # paths that need the API key when one is set
_BODY_METHODS = {"POST", "PUT", "PATCH"}
_VERSIONED = ("fastapi", "uvicorn", "pydantic", "torch", "transformers", "onnxruntime", "onnxruntime-gpu")
ERROR_RESPONSES = {status: {"model": ErrorBody} for status in (401, 413, 422, 503, 504)}


class ServiceState:
    """The model, its executor and batcher, and where loading stands."""

    def __init__(self, settings: Settings, extractor=None):
        self.settings = settings
        self.extractor = extractor
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: MicroBatcher | None = None
        self.phase = "starting"
        self.error: str | None = None
        self.metrics = Metrics()

    async def load(self) -> None:
        """Load (unless given) and warm up the model in the model thread, then start batching."""
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            if self.extractor is None:
                self.phase = "loading model"
                from hugie.extractor import Extractor

                load = functools.partial(Extractor.load, s.model, backend=s.backend, device=s.device,
                                         concurrent=s.fast_lane_chars > 0 or s.executor_threads > 1)
                self.extractor = await loop.run_in_executor(self.executor, load)
            if s.warmup:
                self.phase = "warming up"
                await loop.run_in_executor(self.executor, self._warmup)
            # the model and its libraries are ~400k long-lived objects: every full collection walked
            # them, pausing all requests ~0.2 s (the p99 of benchmarks/load_test.py); frozen, the
            # collector only sees what requests allocate
            gc.collect()
            gc.freeze()
            self.batcher = MicroBatcher(self.extractor, self.executor, max_batch=s.max_batch,
                                        max_wait_ms=s.max_wait_ms, max_queue=s.max_queue,
                                        concurrency=s.executor_threads, retry_after_s=s.retry_after_s,
                                        metrics=self.metrics, limits=s.request_limits(),
                                        fast_lane_chars=s.fast_lane_chars, after_call=_trim_heap)
            self.batcher.start()
            self.phase = "ready"
            log.info("model ready: %s", self.extractor.model_path)
        except Exception as exc:  # noqa: BLE001 - reported by /health and /ready
            self.phase = "failed"
            self.error = str(exc)
            log.exception("model failed to load")

    def _warmup(self) -> None:
        from hugie.windows import warm_up

        self.extractor.extract_entities("张三去了北京。", ["人名"])
        warm_up()  # jieba's dictionary, which long texts need for their window cuts

    def check_key(self, scope) -> None:
        """401 (E105) for a protected path without the API key, when one is set."""
        if self.settings.api_key is None or scope["path"].rstrip("/") not in PROTECTED:
            return
        headers = Headers(scope=scope)
        given = headers.get("x-api-key")
        if given is None and headers.get("authorization", "").lower().startswith("bearer "):
            given = headers["authorization"][7:].strip()
        if not key_matches(given, self.settings.api_key.get_secret_value()):
            raise ApiError(401, "E105", headers={"WWW-Authenticate": 'Bearer realm="hugie"'})

    def require_ready(self) -> MicroBatcher:
        if self.phase == "ready" and self.batcher is not None:
            return self.batcher
        retry = {"Retry-After": str(self.settings.retry_after_s)}
        if self.phase == "failed":
            raise ApiError(503, "E110", reason=self.error)
        if self.phase == "shutting down":
            raise ApiError(503, "E111", headers=retry)
        raise ApiError(503, "E106", headers=retry, state=self.phase)

    async def close(self) -> None:
        self.phase = "shutting down"
        if self.batcher is not None:
            await self.batcher.close()
        if self.executor is not None:
            await asyncio.to_thread(self.executor.shutdown, True)


class ServiceMiddleware:
    """Outermost layer: request ids, body-size limit, metrics, access log, 500s as error bodies."""

    def __init__(self, app, state: ServiceState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics = self.state.metrics
        given = Headers(scope=scope).get("x-request-id")
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        start = time.perf_counter()
        response = {"status": 500, "started": False}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                response["status"], response["started"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        metrics.inflight.inc()
        try:
            self.state.check_key(scope)  # before the body is read or validated
            receive = await self._limit_body(scope, receive)
            await self.app(scope, receive, send_with_id)
        except ApiError as exc:  # raised here (auth, body limit), before the app ran
            await _send_error(exc.status, exc.code, exc.message, rid, exc.headers, metrics, scope, receive,
                              send_with_id)
        except ClientDisconnect:  # nobody left to answer
            response["status"] = 499
        except asyncio.CancelledError:  # shutdown went past its grace period: a retryable answer, not a bare 500
            if not response["started"]:
                headers = {"Retry-After": str(self.state.settings.retry_after_s)}
                await _send_error(503, "E111", API_MESSAGES["E111"], rid, headers, metrics, scope, receive,
                                  send_with_id)
        except Exception as exc:  # noqa: BLE001 - an error body instead of a bare 500
            log.exception("request_id=%s unhandled error", rid)
            if not response["started"]:
                msg = API_MESSAGES["E108"].format(type=type(exc).__name__, request_id=rid)
                await _send_error(500, "E108", msg, rid, None, metrics, scope, receive, send_with_id)
        finally:
            metrics.inflight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            elapsed = time.perf_counter() - start
            metrics.requests.labels(metrics.method_label(scope["method"]), label, str(response["status"])).inc()
            metrics.latency.labels(label).observe(elapsed)
            log.info("request_id=%s %s %s %d %.1fms", rid, scope["method"], scope["path"], response["status"],
                     elapsed * 1000)
            request_id_var.reset(token)

    async def _limit_body(self, scope, receive):
        """Read the whole body (at most ``max_body_bytes``) and replay it; 413 beyond that."""
        if scope["method"] not in _BODY_METHODS:
            return receive
        limit = self.state.settings.max_body_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _discard_body(receive)
            raise ApiError(413, "E101", value=int(declared), limit=limit)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away: let the app see it
                async def replay_disconnect(early=message):
                    return early

                return replay_disconnect
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                if message.get("more_body", False):
                    await _discard_body(receive)
                raise ApiError(413, "E101", value=f"at least {total}", limit=limit)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


async def _discard_body(receive, seconds: float = LINGER_S, most: int = LINGER_BYTES) -> None:
    """Read and drop the rest of a body that will not be served (for at most ``seconds`` and ``most`` bytes), so
    a client still sending it gets the 413 instead of a connection reset."""
    deadline = time.monotonic() + seconds
    read = 0
    try:
        while read < most and (left := deadline - time.monotonic()) > 0:
            message = await asyncio.wait_for(receive(), left)
            read += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
    except asyncio.TimeoutError:
        return


async def _send_error(status, code, message, rid, headers, metrics, scope, receive, send) -> None:
    metrics.errors.labels(code).inc()
    await error_response(status, code, message, rid, headers)(scope, receive, send)


def key_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _validation_details(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}")
    return "; ".join(parts)


def _versions() -> dict:
    out = {"hugie": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _fix_mmap_threshold(nbytes: int = 64 * 1024) -> None:
    """Pin glibc's mmap threshold (unless ``MALLOC_MMAP_THRESHOLD_`` is set).

    glibc raises the threshold each time a large block is freed, so after a while the model's
    variable-size tensors come from the heap and fragment it: RSS crept up 14 % over 10k requests
    in ``benchmarks/load_test.py`` (no Python object leaked); pinned, 2.6 %. No-op off glibc.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(-8, 2)  # M_ARENA_MAX: the model threads share heaps instead of keeping one each


def _trim_heap() -> None:
    """Hand glibc's free heap pages back to the system (``malloc_trim``) after a model call: what a long text's
    call freed would otherwise stay in the process (RSS after benchmarks/abuse_test.py: +11 % -> +7 %). No-op off
    glibc."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def create_app(settings: Settings | None = None, *, extractor=None) -> FastAPI:
    """The service app. ``extractor``: serve this one instead of loading ``settings.model``."""
    settings = settings or Settings()
    state = ServiceState(settings, extractor)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _fix_mmap_threshold()
        threads = settings.executor_threads + (1 if settings.fast_lane_chars > 0 else 0)  # + the fast lane's
        state.executor = ThreadPoolExecutor(threads, thread_name_prefix="hugie-model")
        loading = asyncio.create_task(state.load())
        try:
            yield
        finally:
            await loading  # a model mid-load finishes loading before the executor goes
            await state.close()

    app = FastAPI(title="hugie", version=__version__, lifespan=lifespan,
                  description="Instruction-driven information extraction: spans for an instruction, "
                              "or entities and relations for a schema.")
    app.state.hugie = state

    def openapi() -> dict:
        """FastAPI's schema, with SchemaResult's two lists required (they are always sent): else every
        ``{"spans": ...}`` answer also matches SchemaResult and breaks the response's ``oneOf``."""
        if app.openapi_schema is None:
            spec = tighten(FastAPI.openapi(app), settings)
            component = spec.get("components", {}).get("schemas", {}).get("SchemaResult")
            if component is not None:
                component["required"] = ["entities", "relations"]
        return app.openapi_schema

    app.openapi = openapi

    def _error(request: Request, status: int, code: str, message: str, headers=None):
        state.metrics.errors.labels(code).inc()
        rid = getattr(request.state, "request_id", None)
        log.info("request_id=%s error %s %s", rid, code, message)
        return error_response(status, code, message, rid, headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(HugieError)
    async def _hugie_error(request: Request, exc: HugieError):
        return _error(request, LIMIT_STATUS.get(exc.code, 422), exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if _CATALOGUED.fullmatch(str(first.get("type", ""))):  # a request rule of the library: its own code
            where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
            return _error(request, 422, first["type"], f"{where}: {first['msg']}" if where else first["msg"])
        return _error(request, 422, "E107", API_MESSAGES["E107"].format(details=_validation_details(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not parse the body (e.g. not UTF-8): invalid, like bad JSON
            return _error(request, 422, "E107", API_MESSAGES["E107"].format(details=f"body: {exc.detail}"))
        return _error(request, exc.status_code, "E109", str(exc.detail), getattr(exc, "headers", None))

    # ------------------------------------------------------------------ auth
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
    bearer = HTTPBearer(auto_error=False)

    async def require_api_key(key: str | None = Security(api_key_header),
                              cred: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:  # noqa: B008
        """The OpenAPI side of auth (the middleware checks the key before the body is read)."""
        given = key if key is not None else (cred.credentials if cred is not None else None)
        if not key_matches(given, settings.api_key.get_secret_value()):
            raise ApiError(401, "E105", headers={"WWW-Authenticate": 'Bearer realm="hugie"'})

    protected = [Depends(require_api_key)] if settings.api_key is not None else []

    # ------------------------------------------------------------------ helpers
    limits = settings.request_limits()

    def check_limits(item: ExtractRequest, where: str = "") -> None:
        if len(item.text) > settings.max_text_chars:
            raise ApiError(413, "E100", field=f"{where}text", value=len(item.text), limit=settings.max_text_chars,
                           setting="HUGIE_MAX_TEXT_CHARS")
        asked = [("instruction", item.instruction)] if item.instruction is not None else []
        asked += [(f"entities[{i}]", e) for i, e in enumerate(item.entities or [])]
        if item.schema_ is not None:
            asked += [(f"schema.entities[{i}]", e) for i, e in enumerate(item.schema_.entities)]
            for i, r in enumerate(item.schema_.relations):
                asked += [(f"schema.relations[{i}].{k}", getattr(r, k)) for k in ("subject", "predicate")]
        for name, value in asked:
            if len(value) > settings.max_instruction_chars:
                raise ApiError(422, "E100", field=f"{where}{name}", value=len(value),
                               limit=settings.max_instruction_chars, setting="HUGIE_MAX_INSTRUCTION_CHARS")
        objects = [(f"schema.relations[{i}].object", r.object) for i, r in
                   enumerate(item.schema_.relations if item.schema_ is not None else []) if r.object]
        for name, value in [("text", item.text), *asked, *objects]:
            # a lone "\ud800" JSON escape parses, but no answer quoting it could be sent back as UTF-8
            bad = _SURROGATE.search(value)
            if bad:
                raise ApiError(422, "E107", details=f"{where}{name}: lone surrogate U+{ord(bad.group()):04X} at "
                                                    f"character {bad.start()} is not valid Unicode")
        # the cost limits that need no model work, counted before anything is tokenized or queued
        passes = state.extractor.passes(item) if state.extractor is not None else first_passes(item)
        limits.check_request(item, passes, field=where.rstrip(".") or "request")

    async def run_item(batcher: MicroBatcher, item: ExtractRequest, reserved: bool = False):
        return (await batcher.run([item], reserved=reserved))[0]

    async def with_timeout(awaitable):
        try:
            return await asyncio.wait_for(awaitable, settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "E104", limit=settings.request_timeout_s) from None

    # ------------------------------------------------------------------ routes
    @app.post("/extract", response_model=ExtractResult, dependencies=protected, responses=ERROR_RESPONSES,
              summary="Spans for an instruction, spans per type for entity types, or entities and relations "
                      "for a schema")
    async def extract(item: ExtractRequest):
        batcher = state.require_ready()
        check_limits(item)
        return await with_timeout(run_item(batcher, item))

    @app.post("/extract/batch", response_model=BatchResponse, dependencies=protected,
              responses=ERROR_RESPONSES, summary="Several extractions; results in the same order")
    async def extract_batch(batch: BatchRequest):
        batcher = state.require_ready()
        if len(batch.items) > settings.max_batch_items:
            raise ApiError(413, "E102", value=len(batch.items), limit=settings.max_batch_items)
        for i, item in enumerate(batch.items):
            check_limits(item, f"items[{i}].")
        batcher.reserve(sum(batcher.cost(item) for item in batch.items))

        async def one(i: int, item: ExtractRequest):
            try:
                return await run_item(batcher, item, reserved=True)
            except HugieError as exc:
                exc.message = f"items[{i}]: {exc.message}"
                raise

        tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(batch.items)]
        try:
            return BatchResponse(results=await with_timeout(asyncio.gather(*tasks)))
        finally:
            for task in tasks:
                task.cancel()

    @app.get("/health", summary="Alive (the process answers)", responses={503: {"model": ErrorBody}})
    async def health():
        if state.phase == "failed":
            raise ApiError(503, "E110", reason=state.error)
        return {"status": "ok"}

    @app.get("/ready", summary="Model loaded and warmed up", responses={503: {"model": ErrorBody}})
    async def ready():
        state.require_ready()
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        if state.batcher is not None:
            state.metrics.queue_depth.set(state.batcher.depth)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info", dependencies=protected, summary="Model, backend, provider, versions, limits")
    async def info():
        out = {"ready": state.phase == "ready", "phase": state.phase, "versions": _versions(),
               "service": {k: getattr(settings, k) for k in (
                   "max_batch", "max_wait_ms", "max_queue", "executor_threads", "fast_lane_chars", "max_text_chars",
                   "max_instruction_chars", "max_entity_types", "max_relations", "max_subjects", "max_spans",
                   "min_subject_threshold", "max_pass_chars", "max_batch_items", "max_body_bytes",
                   "request_timeout_s")}}
        out["service"]["auth"] = settings.api_key is not None
        if state.extractor is not None and state.phase == "ready":
            details = state.extractor.info()
            out.update(model=details.get("model"), backend=details.get("backend"),
                       device=details.get("device"),
                       provider=details.get("provider", details.get("providers", details.get("device"))),
                       extractor=details)
        return out

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(ServiceMiddleware, state=state)
    if settings.ui:  # the demo page (api/ui.py): static files, at /ui/ and / redirecting there
        from .ui import ui_router

        app.include_router(ui_router())
    return app
