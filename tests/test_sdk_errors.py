"""Every SDK failure is a HugieAPIError with its cause chained, and only 429/503/transport errors are retried
(issue 23: non-JSON 2xx, wrong shape, bad gzip, a URL without a scheme), sync and async, on mock transports."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from pydantic import ValidationError

from hugie.client import AsyncClient, Client, HugieAPIError, _retryable

SPAN = {"text": "张三", "start": 0, "end": 2, "score": 0.9}
NOT_JSON = ("not json", lambda: httpx.Response(200, text="<html>proxy page</html>"), json.JSONDecodeError)
BAD_GZIP = ("bad gzip", lambda: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip"),
            httpx.DecodingError)
WRONG_SHAPE = ("wrong shape", lambda: httpx.Response(200, json={"spans": "nope"}), ValidationError)
CASES = [NOT_JSON, BAD_GZIP, WRONG_SHAPE]


def serving(answer):
    """A mock transport answering ``answer()`` to every request; counts the requests."""
    calls = []

    def handler(request):
        calls.append(request.url.path)
        return answer()

    return handler, calls


def sync_call(answer, call, **kw):
    handler, calls = serving(answer)
    c = Client("http://svc", transport=httpx.MockTransport(handler), retries=3, **kw)
    c._sleep = lambda seconds: None
    with pytest.raises(HugieAPIError) as info:
        call(c)
    return info.value, calls


def async_call(answer, call, **kw):
    handler, calls = serving(answer)

    async def go():
        async with AsyncClient("http://svc", transport=httpx.MockTransport(handler), retries=3, **kw) as c:
            c._sleep = lambda seconds: asyncio.sleep(0)
            with pytest.raises(HugieAPIError) as info:
                await call(c)
            return info.value

    return asyncio.run(go()), calls


@pytest.mark.parametrize("name, answer, cause", CASES, ids=[c[0] for c in CASES])
def test_unusable_answers_are_hugie_api_errors_with_the_cause_and_not_retried(name, answer, cause):
    err, calls = sync_call(answer, lambda c: c.extract("找人名", "张三"))
    assert err.code == "response" and isinstance(err.__cause__, cause), (name, repr(err.__cause__))
    assert calls == ["/extract"], "not retried"
    err, calls = async_call(answer, lambda c: c.extract("找人名", "张三"))
    assert err.code == "response" and isinstance(err.__cause__, cause)
    assert calls == ["/extract"]


@pytest.mark.parametrize("name, answer, cause", [NOT_JSON, BAD_GZIP], ids=["not json", "bad gzip"])
def test_unusable_answers_on_plain_endpoints(name, answer, cause):
    for method in ("health", "ready", "info"):
        err, calls = sync_call(answer, lambda c, method=method: getattr(c, method)())
        assert err.code == "response" and isinstance(err.__cause__, cause) and calls == [f"/{method}"]
        err, calls = async_call(answer, lambda c, method=method: getattr(c, method)())
        assert err.code == "response" and isinstance(err.__cause__, cause) and calls == [f"/{method}"]


def test_a_batch_answer_of_the_wrong_shape_or_length():
    items = [{"instruction": "找人名", "text": t} for t in ("张三", "李四")]
    for body in ({"results": "nope"}, [SPAN], {"results": [{"spans": [SPAN]}]}):  # the last: 1 result for 2 items
        answer = lambda body=body: httpx.Response(200, json=body)  # noqa: E731
        err, calls = sync_call(answer, lambda c: c.run(items))
        assert (err.status, err.code) == (200, "response") and calls == ["/extract/batch"], body
        assert isinstance(err.__cause__, ValueError)
        err, calls = async_call(answer, lambda c: c.run(items))
        assert (err.status, err.code) == (200, "response") and calls == ["/extract/batch"], body
    err, _ = sync_call(lambda: httpx.Response(200, json={"results": [{"spans": [SPAN]}]}), lambda c: c.run(items))
    assert "1 results for 2 items" in err.message


@pytest.mark.parametrize("url", ["127.0.0.1:1", "localhost:8000", "ftp://host", "http://", "", "http://[::1"])
def test_a_base_url_without_http_is_an_error_at_construction(url):
    sent = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200, json={}))
    with pytest.raises(HugieAPIError) as info:
        Client(url, transport=transport)
    assert (info.value.status, info.value.code) == (0, "url") and repr(url) in info.value.message
    with pytest.raises(HugieAPIError) as info:
        AsyncClient(url)
    assert info.value.code == "url" and not sent


def test_only_overload_and_transport_errors_are_retryable():
    request = httpx.Request("GET", "http://svc/health")
    assert _retryable(httpx.ConnectError("refused", request=request))
    assert _retryable(httpx.ReadTimeout("slow", request=request))
    assert _retryable(HugieAPIError(503, "E103", "busy")) and _retryable(HugieAPIError(429, "rate", "slow down"))
    assert not _retryable(httpx.DecodingError("bad gzip", request=request))
    assert not _retryable(httpx.UnsupportedProtocol("no scheme", request=request))
    assert not _retryable(HugieAPIError(200, "response", "not JSON"))
    assert not _retryable(HugieAPIError(422, "E107", "bad"))


def test_wait_until_ready_turns_unusable_answers_into_hugie_api_errors():
    for answer, cause in ((NOT_JSON[1], json.JSONDecodeError), (BAD_GZIP[1], httpx.DecodingError)):
        err, calls = sync_call(answer, lambda c: c.wait_until_ready(timeout=60, poll=0.01))
        assert err.code == "response" and isinstance(err.__cause__, cause) and calls == ["/ready"]
        err, calls = async_call(answer, lambda c: c.wait_until_ready(timeout=60, poll=0.01))
        assert err.code == "response" and isinstance(err.__cause__, cause) and calls == ["/ready"]
