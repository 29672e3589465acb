"""Python SDK for the hugie service: :class:`Client` and :class:`AsyncClient` (httpx).

>>> with Client("http://127.0.0.1:8000") as c:                      # doctest: +SKIP
...     c.extract("找到文章中所有【人名】类型的实体？", "张三去了北京。")
[Span(text='张三', start=0, end=2, score=0.97)]

Results are the pydantic models of :mod:`hugie.types`. Every failure is one exception,
:class:`HugieAPIError` (status, code, message, request_id; the cause chained): an error answer
(its catalogued code), no answer (code ``connection``), an answer that is not what the service
sends (code ``response``: not JSON, the wrong shape, an undecodable body), a base URL without
``http://`` or ``https://`` (code ``url``, at construction). 429 and 503 answers and connection
errors are retried with exponential backoff (``Retry-After`` honoured); nothing else is. Light on purpose:
importing this module never imports torch or transformers.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt

from .types import BatchResponse, ExtractRequest, ExtractResult, Schema, SchemaResult, Span, request_dict

RETRY_STATUSES = frozenset({429, 503})


class HugieAPIError(Exception):
    """An error answer from the service (or no answer: ``status`` 0, code ``connection``)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 retry_after: float | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        super().__init__(f"HTTP {status} [{code}] {message}" + (f" (request {request_id})" if request_id else ""))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _check(response: httpx.Response, parse=None) -> Any:
    """The JSON body of a 2xx answer (through ``parse`` when given), else :class:`HugieAPIError` from the
    error body; code ``response`` when a 2xx body is not JSON or ``parse`` rejects it."""
    request_id = response.headers.get("x-request-id")
    if response.is_success:
        status = response.status_code
        try:
            data = response.json()
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise HugieAPIError(status, "response", f"the service answered {status} with a body that is not JSON: "
                                f"{response.text[:200]!r}", request_id) from exc
        try:
            return data if parse is None else parse(data)
        except (ValidationError, ValueError, TypeError) as exc:
            raise HugieAPIError(status, "response", f"the service answered {status} with an unexpected shape: "
                                f"{exc}", request_id) from exc
    code, message = f"HTTP{response.status_code}", response.text[:500] or response.reason_phrase
    try:
        err = response.json()["error"]
        code, message, request_id = err["code"], err["message"], err.get("request_id") or request_id
    except (ValueError, KeyError, TypeError):
        pass
    raise HugieAPIError(response.status_code, code, message, request_id,
                        _retry_after(response.headers.get("retry-after")))


def _retryable(exc: BaseException) -> bool:
    """429/503 answers and transport errors (not an unsupported URL, nor a body that does not decode)."""
    if isinstance(exc, HugieAPIError):
        return exc.status in RETRY_STATUSES
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)


def _body(item: ExtractRequest | dict) -> dict:
    """The JSON body of one request (an :class:`ExtractRequest` or a plain dict of its fields)."""
    if isinstance(item, ExtractRequest):
        return item.model_dump(by_alias=True, exclude_none=True)
    if isinstance(item, dict):
        body = dict(item)
        if isinstance(body.get("schema"), Schema):
            body["schema"] = body["schema"].model_dump(exclude_defaults=True)
        return body
    raise TypeError(f"a request is an ExtractRequest or a dict of its fields, got {type(item).__name__}")


def _request(**fields) -> dict:
    """A request body from keyword arguments (see :func:`hugie.types.request_dict`)."""
    return _body(request_dict(**fields))


_RESULT = TypeAdapter(ExtractResult)


def _results(n: int):
    """A parser of an ``/extract/batch`` answer that must hold ``n`` results."""

    def parse(data: Any) -> list[ExtractResult]:
        results = BatchResponse.model_validate(data).results
        if len(results) != n:
            raise ValueError(f"{len(results)} results for {n} items")
        return results

    return parse


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Base:
    def __init__(self, base_url: str, api_key: str | None, timeout: float, retries: int, backoff: float,
                 max_backoff: float, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        try:
            url = httpx.URL(base_url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise HugieAPIError(0, "url", f"base_url is not a URL ({exc}): {base_url!r}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise HugieAPIError(0, "url", f"base_url must be http://HOST[:PORT] or https://…, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.batch_size = batch_size
        self.headers = {"User-Agent": "hugie-client", **({"X-API-Key": api_key} if api_key else {})}
        self.timeout = httpx.Timeout(timeout)

    def _wait(self, state) -> float:
        """Retry-After when the server gave one, else exponential backoff with jitter."""
        exc = state.outcome.exception()
        if isinstance(exc, HugieAPIError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_backoff)
        return min(self.max_backoff, self.backoff * 2 ** (state.attempt_number - 1)) * (0.5 + random.random() / 2)

    def _retry_args(self) -> dict:
        return dict(stop=stop_after_attempt(self.retries + 1), wait=self._wait,
                    retry=retry_if_exception(_retryable), reraise=True, sleep=self._sleep)

    @staticmethod
    def _request_headers() -> dict:
        return {"X-Request-ID": uuid.uuid4().hex}


class _Readiness:
    """One poll of ``/ready`` for ``wait_until_ready``: ``True`` when ready, ``False`` to poll again;
    raises when waiting is pointless (the model failed to load, the server process exited, time is up)."""

    def __init__(self, base_url: str, timeout: float, process):
        self.url, self.process = base_url + "/ready", process
        self.timeout, self.deadline = timeout, time.monotonic() + timeout
        self.last = "no answer yet"

    def check(self, answer: httpx.Response | Exception) -> bool:
        if isinstance(answer, httpx.Response):
            if answer.is_success:
                return True
            try:
                _check(answer)
            except HugieAPIError as exc:
                if exc.status != 503 or exc.code == "E110":  # E110: the model failed to load
                    raise
                self.last = str(exc)
        else:
            self.last = f"{type(answer).__name__}: {answer}"
        if self.process is not None and self.process.poll() is not None:
            raise HugieAPIError(0, "connection", f"the server process exited with code "
                                                 f"{self.process.returncode} before {self.url} was ready")
        if time.monotonic() >= self.deadline:
            raise HugieAPIError(0, "timeout", f"{self.url} not ready after {self.timeout:g} s ({self.last})")
        return False


def _request_error(exc: httpx.RequestError, url: str) -> HugieAPIError:
    """No usable answer: code ``connection`` (transport), else ``response`` (e.g. a body that does not decode)."""
    code = "connection" if isinstance(exc, httpx.TransportError) else "response"
    return HugieAPIError(0, code, f"{type(exc).__name__} talking to {url}: {exc}")


class Client(_Base):
    """Blocking client. ``batch_size``: items per ``/extract/batch`` call (the server's limit is 64)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 batch_size: int = 32, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, timeout, retries, backoff, max_backoff, batch_size)
        self._sleep = time.sleep
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                  transport=transport)

    def _call(self, method: str, path: str, body: dict | None = None, parse=None) -> Any:
        try:
            for attempt in Retrying(**self._retry_args()):
                with attempt:
                    response = self._http.request(method, path, json=body, headers=self._request_headers())
                    return _check(response, parse)
        except httpx.RequestError as exc:  # transport errors after the retries, and undecodable bodies
            raise _request_error(exc, self.base_url + path) from exc

    def extract(self, instruction: str, text: str, *, threshold: float | None = None,
                top_k: int | None = None) -> list[Span]:
        """Spans answering ``instruction`` in ``text``."""
        return self.run([_request(instruction=instruction, text=text, threshold=threshold, top_k=top_k)])[0].spans

    def extract_entities(self, text: str, types: Sequence[str], **options) -> dict[str, list[Span]]:
        """``{type: spans}`` for each entity type (options as :meth:`hugie.Extractor.extract_entities`)."""
        return self.run([_request(text=text, entities=list(types), **options)])[0].entities

    def extract_schema(self, text: str, schema: dict | Schema, **options) -> SchemaResult:
        """Entities and relations of ``schema`` in ``text`` (options as :meth:`hugie.Extractor.extract_schema`)."""
        return self.run([_request(text=text, schema=schema, **options)])[0]

    def run(self, requests: Iterable[ExtractRequest | dict]) -> list[ExtractResult]:
        """One result per request, in order, like :meth:`hugie.Extractor.run`: one request alone goes to
        ``/extract``, more to ``/extract/batch``, ``batch_size`` per call."""
        bodies = [_body(item) for item in requests]
        if len(bodies) == 1:
            return [self._call("POST", "/extract", bodies[0], _RESULT.validate_python)]
        out: list = []
        for chunk in _chunks(bodies, self.batch_size):
            out += self._call("POST", "/extract/batch", {"items": list(chunk)}, _results(len(chunk)))
        return out

    def health(self) -> dict:
        return self._call("GET", "/health")

    def ready(self) -> dict:
        return self._call("GET", "/ready")

    def info(self) -> dict:
        return self._call("GET", "/info")

    def wait_until_ready(self, timeout: float = 120.0, *, poll: float = 0.2, process=None) -> dict:
        """Block until ``/ready`` answers 200 (model loaded and warmed up) and return its body.

        Raises :class:`HugieAPIError` at once if the model failed to load or ``process`` (e.g. the
        ``subprocess.Popen`` running ``hugie serve``) exits, and with code ``timeout`` after ``timeout`` s.
        """
        readiness = _Readiness(self.base_url, timeout, process)
        while True:
            try:
                answer = self._http.get("/ready", timeout=max(1.0, poll * 10))
            except httpx.TransportError as exc:
                answer = exc
            except httpx.RequestError as exc:
                raise _request_error(exc, readiness.url) from exc
            if readiness.check(answer):
                return _check(answer)
            self._sleep(poll)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Base):
    """Asyncio client; ``run`` sends up to ``concurrency`` chunks at a time."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 30.0,
                 batch_size: int = 32, concurrency: int = 4, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key, timeout, retries, backoff, max_backoff, batch_size)
        self.concurrency = concurrency
        self._sleep = asyncio.sleep
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                       transport=transport)

    async def _call(self, method: str, path: str, body: dict | None = None, parse=None) -> Any:
        try:
            async for attempt in AsyncRetrying(**self._retry_args()):
                with attempt:
                    response = await self._http.request(method, path, json=body, headers=self._request_headers())
                    return _check(response, parse)
        except httpx.RequestError as exc:  # transport errors after the retries, and undecodable bodies
            raise _request_error(exc, self.base_url + path) from exc

    async def extract(self, instruction: str, text: str, *, threshold: float | None = None,
                      top_k: int | None = None) -> list[Span]:
        request = _request(instruction=instruction, text=text, threshold=threshold, top_k=top_k)
        return (await self.run([request]))[0].spans

    async def extract_entities(self, text: str, types: Sequence[str], **options) -> dict[str, list[Span]]:
        return (await self.run([_request(text=text, entities=list(types), **options)]))[0].entities

    async def extract_schema(self, text: str, schema: dict | Schema, **options) -> SchemaResult:
        return (await self.run([_request(text=text, schema=schema, **options)]))[0]

    async def run(self, requests: Iterable[ExtractRequest | dict]) -> list[ExtractResult]:
        """One result per request, in order; up to ``concurrency`` ``/extract/batch`` calls at a time."""
        bodies = [_body(item) for item in requests]
        if len(bodies) == 1:
            return [await self._call("POST", "/extract", bodies[0], _RESULT.validate_python)]
        gate = asyncio.Semaphore(self.concurrency)

        async def send(chunk):
            async with gate:
                return await self._call("POST", "/extract/batch", {"items": list(chunk)}, _results(len(chunk)))

        parts = await asyncio.gather(*(send(c) for c in _chunks(bodies, self.batch_size)))
        return [r for part in parts for r in part]

    async def health(self) -> dict:
        return await self._call("GET", "/health")

    async def ready(self) -> dict:
        return await self._call("GET", "/ready")

    async def info(self) -> dict:
        return await self._call("GET", "/info")

    async def wait_until_ready(self, timeout: float = 120.0, *, poll: float = 0.2, process=None) -> dict:
        """Wait until ``/ready`` answers 200 and return its body (see :meth:`Client.wait_until_ready`)."""
        readiness = _Readiness(self.base_url, timeout, process)
        while True:
            try:
                answer = await self._http.get("/ready", timeout=max(1.0, poll * 10))
            except httpx.TransportError as exc:
                answer = exc
            except httpx.RequestError as exc:
                raise _request_error(exc, readiness.url) from exc
            if readiness.check(answer):
                return _check(answer)
            await self._sleep(poll)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
