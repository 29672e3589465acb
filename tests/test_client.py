"""The SDK against a real uvicorn on 127.0.0.1 (random free port), and its retry logic on mock transports."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from hugie.api import create_app

from hugie.client import AsyncClient, Client, HugieAPIError
from hugie.types import EntitiesResult, ExtractRequest, Schema, SchemaResult, Span
from tests.test_api import LOC, PER, make_extractor, make_settings


@contextmanager
def running_server(app):
    """Serve ``app`` with uvicorn in a thread on a free port; yields the base URL; stops gracefully."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(2000):
            try:
                if server.started and httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        else:
            raise AssertionError("server never became ready")
        yield url, server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def server_url(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)
    with running_server(create_app(make_settings(max_text_chars=50, max_batch_items=4), extractor=ex)) as (url, _):
        yield url


def no_sleep(recorder: list):
    def sleep(seconds):
        recorder.append(seconds)
    return sleep


# ---------------------------------------------------------------------- against a real server
def test_client_extract_schema_batch_and_info(server_url):
    with Client(server_url, batch_size=3) as c:
        spans = c.extract(PER, "张三和李四在北京")
        assert all(isinstance(s, Span) for s in spans)
        assert [(s.text, s.start) for s in spans] == [("张三", 0), ("李四", 3)]
        assert [s.text for s in c.extract(PER, "张三和李四", threshold=0.8)] == ["张三"]
        assert [s.text for s in c.extract(PER, "张三和李四", top_k=1)] == ["张三"]

        result = c.extract_schema("张三在北京", Schema(entities=["人名", "地名"]))
        assert isinstance(result, SchemaResult)
        assert [(e.type, e.text) for e in result.entities] == [("人名", "张三"), ("地名", "北京")]
        assert c.extract_schema("李四", {"entities": ["人名"]}).entities[0].text == "李四"

        names = ["张三", "李四", "赵云", "陈静", "刘德华", "周杰伦", "孙悟空"]
        items = [{"instruction": PER, "text": f"{n}去了上海"} for n in names]  # 7 in chunks of 3 (server limit: 4)
        items.insert(2, {"text": "王小明在北京", "schema": {"entities": ["地名"]}})
        items.insert(5, ExtractRequest(text="王小明在北京", entities=["人名", "地名"]))
        results = c.run(items)
        assert len(results) == 9
        assert isinstance(results[2], SchemaResult) and results[2].entities[0].text == "北京"
        assert isinstance(results[5], EntitiesResult)
        assert {t: [s.text for s in v] for t, v in results[5].entities.items()} == {"人名": ["王小明"], "地名": ["北京"]}
        assert [[s.text for s in r.spans] for i, r in enumerate(results) if i not in (2, 5)] == [[n] for n in names]
        by_type = c.extract_entities("张三在北京", ["人名", "地名"], top_k=1)
        assert {t: [s.text for s in v] for t, v in by_type.items()} == {"人名": ["张三"], "地名": ["北京"]}

        assert c.health() == {"status": "ok"} and c.ready() == {"status": "ready"}
        assert c.info()["backend"] == "fake"


def test_client_errors_carry_status_code_message_and_request_id(server_url):
    with Client(server_url, retries=0) as c:
        with pytest.raises(HugieAPIError) as info:
            c.extract(PER, "张" * 51)
        err = info.value
        assert (err.status, err.code) == (413, "E100")
        assert "51 characters" in err.message and "limit is 50" in err.message and err.request_id
        with pytest.raises(HugieAPIError) as info:
            Client(server_url, batch_size=5, retries=0).run([{"instruction": PER, "text": "张三"}] * 5)
        assert (info.value.status, info.value.code) == (413, "E102")
        with pytest.raises(HugieAPIError) as info:
            c.extract("人" * 200, "张三")
        assert (info.value.status, info.value.code) == (422, "E007")


def test_async_client(server_url):
    async def go():
        async with AsyncClient(server_url, batch_size=2, concurrency=3) as c:
            spans, result = await asyncio.gather(c.extract(LOC, "张三在上海"),
                                                 c.extract_schema("张三", {"entities": ["人名"]}))
            assert [s.text for s in spans] == ["上海"] and result.entities[0].text == "张三"
            names = ["张三", "李四", "赵云", "陈静", "刘德华"]
            results = await c.run([{"instruction": PER, "text": n} for n in names])
            assert [[s.text for s in r.spans] for r in results] == [[n] for n in names]
            by_type = await c.extract_entities("张三在上海", ["地名"])
            assert [s.text for s in by_type["地名"]] == ["上海"]
            with pytest.raises(HugieAPIError) as info:
                await c.extract(PER, "张" * 51)
            assert info.value.code == "E100"
            assert (await c.ready()) == {"status": "ready"}
    asyncio.run(go())


def test_client_auth(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)
    with running_server(create_app(make_settings(api_key="t0ken", warmup=False), extractor=ex)) as (url, _):
        with Client(url, api_key="t0ken") as c:
            assert [s.text for s in c.extract(PER, "张三")] == ["张三"]
            assert c.info()["service"]["auth"] is True
        with Client(url, api_key="nope") as c, pytest.raises(HugieAPIError) as info:
            c.extract(PER, "张三")
        assert (info.value.status, info.value.code) == (401, "E105")
        assert httpx.get(url + "/health").status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(tiny_tokenizer):
    gate = threading.Event()
    ex, _ = make_extractor(tiny_tokenizer, gate=gate)
    app = create_app(make_settings(warmup=False, max_wait_ms=50), extractor=ex)
    outcome = {}
    try:
        with running_server(app) as (url, server):
            def call(name):
                with Client(url, retries=0) as c:
                    outcome[name] = [s.text for s in c.extract(PER, f"{name}来了")]

            callers = [threading.Thread(target=call, args=(n,)) for n in ("张三", "李四")]
            for t in callers:
                t.start()
            registry = app.state.hugie.metrics.registry
            for _ in range(3000):  # both requests are inside the service, held by the model
                if registry.get_sample_value("hugie_inflight_requests") == 2 and app.state.hugie.batcher._running:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("requests never reached the model")
            server.should_exit = True  # SIGTERM does this: stop accepting, finish what is in flight
            time.sleep(0.2)
            assert not outcome, "requests finished before the model was released"
            gate.set()
            for t in callers:
                t.join(30)
    finally:
        gate.set()
    assert outcome == {"张三": ["张三"], "李四": ["李四"]}
    assert app.state.hugie.phase == "shutting down"


# ---------------------------------------------------------------------- retries (mock transports)
def test_retries_on_503_and_429_honour_retry_after():
    seen = []

    def handler(request):
        seen.append(request.headers["x-request-id"])
        if len(seen) == 1:
            return httpx.Response(503, headers={"Retry-After": "7"},
                                  json={"error": {"code": "E103", "message": "overloaded", "request_id": "r1"}})
        if len(seen) == 2:
            return httpx.Response(429, json={"error": {"code": "rate", "message": "slow down", "request_id": "r2"}})
        return httpx.Response(200, json={"spans": [{"text": "张三", "start": 0, "end": 2, "score": 0.9}]})

    waits: list[float] = []
    c = Client("http://svc", transport=httpx.MockTransport(handler), backoff=0.25, retries=3)
    c._sleep = no_sleep(waits)
    assert [s.text for s in c.extract(PER, "张三")] == ["张三"]
    assert len(seen) == 3 and len(set(seen)) == 3
    assert waits[0] == 7.0, "Retry-After honoured"
    assert 0.125 <= waits[1] <= 0.5, "exponential backoff (with jitter) when no Retry-After"


def test_retries_give_up_and_do_not_retry_client_errors():
    calls = []

    def overloaded(request):
        calls.append(1)
        return httpx.Response(503, json={"error": {"code": "E103", "message": "busy", "request_id": "x"}})

    waits: list[float] = []
    c = Client("http://svc", transport=httpx.MockTransport(overloaded), retries=2, backoff=0.01)
    c._sleep = no_sleep(waits)
    with pytest.raises(HugieAPIError) as info:
        c.extract(PER, "张三")
    assert (info.value.status, info.value.code, info.value.request_id) == (503, "E103", "x")
    assert len(calls) == 3 and len(waits) == 2

    calls.clear()

    def invalid(request):
        calls.append(1)
        return httpx.Response(422, json={"error": {"code": "E107", "message": "bad", "request_id": "y"}})

    c = Client("http://svc", transport=httpx.MockTransport(invalid), retries=5)
    with pytest.raises(HugieAPIError) as info:
        c.extract(PER, "张三")
    assert info.value.status == 422 and len(calls) == 1


def test_connection_errors_are_retried_then_raised_as_hugie_api_error():
    calls = []

    def refuse(request):
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"spans": []})

    waits: list[float] = []
    c = Client("http://svc", transport=httpx.MockTransport(refuse), retries=3, backoff=0.01)
    c._sleep = no_sleep(waits)
    assert c.extract(PER, "张三") == [] and len(calls) == 3

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = Client(f"http://127.0.0.1:{port}", retries=1, backoff=0.01)
    with pytest.raises(HugieAPIError) as info:
        c.health()
    assert info.value.status == 0 and info.value.code == "connection"


def test_async_retries_and_non_json_errors():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, text="upstream busy")
        if len(calls) == 2:
            return httpx.Response(502, text="<html>bad gateway</html>")
        return httpx.Response(200, json={})

    async def go():
        c = AsyncClient("http://svc", transport=httpx.MockTransport(handler), retries=3)
        with pytest.raises(HugieAPIError) as info:
            await c.health()
        await c.aclose()
        return info.value

    err = asyncio.run(go())
    assert len(calls) == 2, "503 retried, 502 not"
    assert (err.status, err.code) == (502, "HTTP502") and "bad gateway" in err.message


def _starting_server(states: list):
    """A /ready handler that answers connection refused, then the given states in turn."""
    calls = []

    def handler(request):
        assert request.url.path == "/ready"
        calls.append(1)
        state = states[min(len(calls), len(states)) - 1]
        if state == "refused":
            raise httpx.ConnectError("refused", request=request)
        if state == "ready":
            return httpx.Response(200, json={"status": "ready"})
        code = "E110" if state == "failed" else "E106"
        return httpx.Response(503, json={"error": {"code": code, "message": state, "request_id": "r"}})

    return handler, calls


def test_wait_until_ready_polls_through_refusals_and_warm_up():
    handler, calls = _starting_server(["refused", "refused", "warming up", "ready"])
    waits: list[float] = []
    c = Client("http://svc", transport=httpx.MockTransport(handler))
    c._sleep = no_sleep(waits)
    assert c.wait_until_ready(timeout=60, poll=0.05) == {"status": "ready"}
    assert len(calls) == 4 and waits == [0.05] * 3

    handler, calls = _starting_server(["warming up", "failed", "ready"])
    c = Client("http://svc", transport=httpx.MockTransport(handler))
    c._sleep = no_sleep([])
    with pytest.raises(HugieAPIError) as info:
        c.wait_until_ready(timeout=60)
    assert info.value.code == "E110" and len(calls) == 2, "a failed load is not waited out"


def test_wait_until_ready_gives_up_on_timeout_or_a_dead_process():
    handler, _ = _starting_server(["warming up"])
    c = Client("http://svc", transport=httpx.MockTransport(handler))
    with pytest.raises(HugieAPIError, match="not ready after 0 s") as info:
        c.wait_until_ready(timeout=0)
    assert info.value.code == "timeout"

    class Exited:
        returncode = 3

        def poll(self):
            return self.returncode

    handler, calls = _starting_server(["refused"])
    c = Client("http://svc", transport=httpx.MockTransport(handler))
    with pytest.raises(HugieAPIError, match="exited with code 3"):
        c.wait_until_ready(timeout=60, process=Exited())
    assert len(calls) == 1

    async def go():
        handler, calls = _starting_server(["refused", "ready"])
        ac = AsyncClient("http://svc", transport=httpx.MockTransport(handler))
        ac._sleep = lambda seconds: asyncio.sleep(0)
        try:
            return await ac.wait_until_ready(timeout=60), len(calls)
        finally:
            await ac.aclose()

    assert asyncio.run(go()) == ({"status": "ready"}, 2)


def test_importing_the_client_stays_light():
    code = ("import sys, hugie.client; heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'fastapi') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
