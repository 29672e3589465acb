"""The HTTP service in-process (httpx ASGITransport + the app's lifespan), on FakeBackend extractors."""

from __future__ import annotations

import asyncio
import json
import threading
from contextlib import asynccontextmanager

import httpx
import pytest
from hugie.api import Settings, create_app

from hugie.extractor import Extractor
from hugie.modeling import HugieConfig
from tests.helpers import FakeBackend

PER = "找到文章中所有【人名】类型的实体？"
LOC = "找到文章中所有【地名】类型的实体？"
ANSWERS = {PER: [("张三", 0.9), ("李四", 0.7), ("王小明", 0.6), ("赵云", 0.95), ("刘德华", 0.85), ("陈静", 0.8),
                 ("周杰伦", 0.75), ("孙悟空", 0.65)],
           LOC: [("北京", 0.8), ("上海", 0.6)]}


class GatedBackend(FakeBackend):
    """FakeBackend that can hold every call until ``gate`` is set, or fail."""

    def __init__(self, tokenizer, answers, gate: threading.Event | None = None, fail: Exception | None = None):
        super().__init__(tokenizer, answers)
        self.gate, self.fail = gate, fail

    def score(self, batch, threshold, max_width):
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        return super().score(batch, threshold, max_width)


def make_settings(**overrides) -> Settings:
    """Settings isolated from the developer's own HUGIE_* environment."""
    return Settings(_env_prefix="HUGIE_TEST_ISOLATED_", **overrides)


def make_extractor(tokenizer, answers=None, max_len=128, **kw):
    backend = GatedBackend(tokenizer, ANSWERS if answers is None else answers, **kw)
    cfg = HugieConfig(max_span_width=16, threshold=0.5, max_seq_length=max_len)
    return Extractor(backend, tokenizer, cfg), backend


async def until(condition, what: str, limit: float = 10.0) -> None:
    """Poll ``condition`` (no timing assert: only a safety net against hanging)."""
    for _ in range(int(limit / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


@asynccontextmanager
async def serving(app, wait_ready: bool = True):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if wait_ready:
                for _ in range(1000):
                    if (await client.get("/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
            yield client


def run(coro):
    return asyncio.run(coro)


def texts(spans):
    return [s["text"] for s in spans]


def assert_error(response, status: int, code: str, *words: str):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["code"] == code
    assert err["request_id"] and err["request_id"] == response.headers["x-request-id"]
    for w in words:
        assert w in err["message"], (w, err["message"])
    return err


@pytest.fixture
def extractor(tiny_tokenizer):
    return make_extractor(tiny_tokenizer)[0]


# ---------------------------------------------------------------------- happy paths
def test_extract_instruction_schema_and_batch(extractor):
    async def go():
        async with serving(create_app(make_settings(), extractor=extractor)) as c:
            r = await c.post("/extract", json={"instruction": PER, "text": "张三和李四在北京"})
            assert r.status_code == 200
            spans = r.json()["spans"]
            assert [(s["text"], s["start"], s["end"]) for s in spans] == [("张三", 0, 2), ("李四", 3, 5)]
            assert spans[0]["score"] == pytest.approx(0.9, abs=1e-4)

            r = await c.post("/extract", json={"text": "张三和李四在北京", "schema": {"entities": ["人名", "地名"]},
                                               "top_k": 1})
            body = r.json()
            assert r.status_code == 200 and body["relations"] == []
            assert [(e["type"], e["text"]) for e in body["entities"]] == [("人名", "张三"), ("地名", "北京")]

            items = [{"instruction": LOC, "text": "张三在上海"}, {"text": "李四", "schema": {"entities": ["人名"]}},
                     {"instruction": PER, "text": "赵云", "threshold": 0.99}]
            r = await c.post("/extract/batch", json={"items": items})
            results = r.json()["results"]
            assert r.status_code == 200 and len(results) == 3
            assert texts(results[0]["spans"]) == ["上海"]
            assert [e["text"] for e in results[1]["entities"]] == ["李四"]
            assert results[2] == {"spans": []}
    run(go())


def test_schema_one_type_per_span_reaches_the_extractor(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer, {PER: [("张三", 0.9), ("北京", 0.6)], LOC: [("北京", 0.8)]})

    async def go():
        async with serving(create_app(make_settings(), extractor=ex)) as c:
            body = {"text": "张三在北京", "schema": {"entities": ["人名", "地名"]}}
            loose = (await c.post("/extract", json=body)).json()
            assert [(e["type"], e["text"]) for e in loose["entities"]] == [("人名", "张三"), ("人名", "北京"),
                                                                           ("地名", "北京")]
            body["schema"]["one_type_per_span"] = True
            strict = (await c.post("/extract", json=body)).json()
            assert [(e["type"], e["text"]) for e in strict["entities"]] == [("人名", "张三"), ("地名", "北京")]
            body["schema"]["one_type_per_span"] = "sometimes"
            assert (await c.post("/extract", json=body)).status_code == 422
            ex.config.one_type_per_span = True  # the model's default, unless the schema says otherwise
            del body["schema"]["one_type_per_span"]
            assert (await c.post("/extract", json=body)).json()["entities"] == strict["entities"]
            body["schema"]["one_type_per_span"] = False
            assert (await c.post("/extract", json=body)).json()["entities"] == loose["entities"]
    run(go())


def test_schema_flat_ner_reaches_the_extractor(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer, {PER: [("李四", 0.9), ("四在", 0.7)], LOC: [("上海", 0.8)]})

    async def go():
        async with serving(create_app(make_settings(), extractor=ex)) as c:
            body = {"text": "李四在上海", "schema": {"entities": ["人名", "地名"]}}
            loose = (await c.post("/extract", json=body)).json()
            assert sorted(e["text"] for e in loose["entities"]) == ["上海", "四在", "李四"]
            body["schema"]["flat_ner"] = True
            flat = (await c.post("/extract", json=body)).json()
            assert sorted(e["text"] for e in flat["entities"]) == ["上海", "李四"]
            body["schema"]["one_type_per_span"] = False
            r = await c.post("/extract", json=body)
            assert r.status_code == 422 and r.json()["error"]["code"] == "E027"
    run(go())


def test_schema_relations_use_the_models_relation_threshold_unless_asked(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer, {PER: [("张三", 0.9)], "找到文章中【张三】的【出生地】？": [("北京", 0.7)]})
    ex.config.relation_threshold = 0.8

    async def go():
        async with serving(create_app(make_settings(), extractor=ex)) as c:
            schema = {"relations": [{"subject": "人名", "predicate": "出生地"}]}

            async def objects(**kw):
                body = {"text": "张三出生于北京", "schema": {**schema, **kw.pop("schema", {})}, **kw}
                r = await c.post("/extract", json=body)
                assert r.status_code == 200, r.text
                return [x["object"]["text"] for x in r.json()["relations"]]

            assert await objects() == []
            assert await objects(threshold=0.6) == ["北京"]
            assert await objects(schema={"relation_threshold": 0.6}) == ["北京"]
            bad = {"text": "张三", "schema": {**schema, "relation_threshold": 1.5}}
            assert (await c.post("/extract", json=bad)).status_code == 422
    run(go())


def test_long_text_within_limit_is_windowed_not_truncated(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: [("王小明", 0.9)]}, max_len=40)
    text = "。".join(f"第{i}句王小明去了北京" for i in range(12))

    async def go():
        async with serving(create_app(make_settings(max_text_chars=len(text), warmup=False), extractor=ex)) as c:
            r = await c.post("/extract", json={"instruction": PER, "text": text})
            assert r.status_code == 200
            spans = r.json()["spans"]
            assert len(spans) == 12 and all(text[s["start"]:s["end"]] == "王小明" for s in spans)
            assert max(s["end"] for s in spans) > len(text) - 10, "the end of the text was read"
    run(go())
    assert sum(backend.calls) > 1


def test_micro_batching_gives_each_caller_its_own_results(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer)
    names = [n for n, _ in ANSWERS[PER]]

    async def go():
        app = create_app(make_settings(max_batch=64, max_wait_ms=300, warmup=False), extractor=ex)
        async with serving(app) as c:
            backend.calls.clear()
            reqs = [c.post("/extract", json={"instruction": PER, "text": f"昨天{name}去了北京。"}) for name in names]
            reqs += [c.post("/extract", json={"instruction": LOC, "text": f"{name}在上海开会"}) for name in names]
            # same text, different thresholds / top-k, inside the same gathered call
            reqs += [c.post("/extract", json={"instruction": PER, "text": "张三和李四", "threshold": 0.8}),
                     c.post("/extract", json={"instruction": PER, "text": "张三和李四", "top_k": 1}),
                     c.post("/extract", json={"instruction": PER, "text": "李四和张三", "threshold": 0.0})]
            responses = await asyncio.gather(*reqs)
            assert all(r.status_code == 200 for r in responses)
            got = [texts(r.json()["spans"]) for r in responses]
            n = len(names)
            assert got[:n] == [[name] for name in names]
            assert got[n:2 * n] == [["上海"]] * n
            assert got[2 * n:] == [["张三"], ["张三"], ["张三", "李四"]]
            metrics = (await c.get("/metrics")).text
            assert "hugie_batch_size_count" in metrics
    run(go())
    assert max(backend.calls) > 1, f"the backend never saw a batch: {backend.calls}"


def test_a_bad_request_does_not_fail_the_requests_batched_with_it(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)
    calls = []
    real = ex.run

    def spy(requests, **kwargs):
        calls.append(len(requests))
        return real(requests, **kwargs)

    ex.run = spy
    too_long = "人" * 200  # fine for the API limit, too many tokens for the model (E007)
    # two subjects found where one is allowed: known only once the model has run (E113)
    fans_out = {"text": "张三和李四", "schema": {"relations": [{"subject": "人名", "predicate": "出生地"}]}}

    async def go():
        app = create_app(make_settings(max_wait_ms=300, warmup=False, max_subjects=1), extractor=ex)
        async with serving(app) as c:
            good, bad = await asyncio.gather(c.post("/extract", json={"instruction": PER, "text": "张三来了"}),
                                             c.post("/extract", json=fans_out))
            assert texts(good.json()["spans"]) == ["张三"]
            assert_error(bad, 413, "E113", "found 2 subjects")
            assert 2 in calls, "the two requests were gathered into one call"
            calls.clear()
            r = await c.post("/extract", json={"instruction": too_long, "text": "张三"})
            assert_error(r, 422, "E007", "200 tokens")
            r = await c.post("/extract/batch", json={"items": [{"instruction": PER, "text": "张三"},
                                                               {"instruction": too_long, "text": "张三"}]})
            assert_error(r, 422, "E007")
            assert calls == [], "an instruction too long for the model is refused before it queues"
    run(go())


# ---------------------------------------------------------------------- limits and validation
def test_limits_name_the_limit_and_the_value(extractor):
    settings = make_settings(max_text_chars=10, max_instruction_chars=30, max_batch_items=2, max_body_bytes=2000)

    async def go():
        async with serving(create_app(settings, extractor=extractor)) as c:
            r = await c.post("/extract", json={"instruction": PER, "text": "张" * 11})
            assert_error(r, 413, "E100", "text is 11 characters", "limit is 10", "HUGIE_MAX_TEXT_CHARS")
            assert (await c.post("/extract", json={"instruction": PER, "text": "张" * 10})).status_code == 200

            r = await c.post("/extract", json={"instruction": "人" * 31, "text": "张三"})
            assert_error(r, 422, "E100", "instruction is 31 characters", "limit is 30")
            r = await c.post("/extract", json={"schema": {"entities": ["x" * 31]}, "text": "张三"})
            assert_error(r, 422, "E100", "schema.entities[0] is 31 characters")

            items = [{"instruction": PER, "text": "张三"}] * 3
            r = await c.post("/extract/batch", json={"items": items})
            assert_error(r, 413, "E102", "batch has 3 items", "limit is 2")
            r = await c.post("/extract/batch", json={"items": [items[0], {"instruction": PER, "text": "张" * 11}]})
            assert_error(r, 413, "E100", "items[1].text is 11 characters")

            big = json.dumps({"instruction": PER, "text": "a" * 3000})
            r = await c.post("/extract", content=big, headers={"content-type": "application/json"})
            assert_error(r, 413, "E101", f"request body is {len(big.encode())} bytes", "limit is 2000 bytes")

            async def chunks():  # no Content-Length: counted while reading
                for _ in range(5):
                    yield b"x" * 1000

            r = await c.post("/extract", content=chunks(), headers={"content-type": "application/json"})
            assert_error(r, 413, "E101", "at least", "limit is 2000 bytes")
    run(go())


@pytest.mark.parametrize("body, code, words", [
    ({"text": "张三"}, "E029", ["exactly one of 'instruction', 'entities' or 'schema'"]),
    ({"text": "张三", "instruction": PER, "schema": {"entities": ["人名"]}}, "E029", ["exactly one"]),
    ({"text": "张三", "instruction": PER, "entities": ["人名"]}, "E029", ["exactly one"]),
    ({"instruction": PER}, "E107", ["text", "Field required"]),
    ({"instruction": PER, "text": 5}, "E107", ["text"]),
    ({"instruction": PER, "text": "张三", "threshold": 1.5}, "E107", ["threshold"]),
    ({"instruction": PER, "text": "张三", "threshold": "0.5"}, "E107", ["threshold", "valid number"]),
    ({"instruction": PER, "text": "张三", "top_k": 0}, "E107", ["top_k"]),
    ({"instruction": "  ", "text": "张三"}, "E002", ["non-empty"]),
    ({"entities": [], "text": "张三"}, "E107", ["entities"]),
    ({"entities": ["人名", " "], "text": "张三"}, "E009", ["non-blank"]),
    ({"entities": ["人名"], "text": "张三", "relation_threshold": 0.5}, "E029", ["relation_threshold applies"]),
    ({"instruction": PER, "text": "张三", "flat_ner": True}, "E029", ["flat_ner applies"]),
    ({"schema": {}, "text": "张三"}, "E005", ["entities"]),
    ({"schema": {"entities": [" "]}, "text": "张三"}, "E009", ["non-blank"]),
    ({"schema": {"relations": [{"subject": "人名", "predicate": ""}]}, "text": "张三"}, "E006", ["predicate"]),
    ({"schema": {"relations": [{"subject": "人名"}]}, "text": "张三"}, "E107", ["predicate"]),
    ({"instruction": PER, "text": "张三", "bogus": 1}, "E107", ["bogus"]),
])
def test_invalid_requests_get_422_error_bodies(extractor, body, code, words):
    async def go():
        async with serving(create_app(make_settings(), extractor=extractor)) as c:
            assert_error(await c.post("/extract", json=body), 422, code, *words)
    run(go())


def test_malformed_json_and_unknown_routes(extractor):
    async def go():
        async with serving(create_app(make_settings(), extractor=extractor)) as c:
            r = await c.post("/extract", content=b"{not json", headers={"content-type": "application/json"})
            assert_error(r, 422, "E107", "JSON")
            assert_error(await c.post("/extract/batch", json={"items": []}), 422, "E107", "items")
            assert_error(await c.get("/nope"), 404, "E109", "Not Found")
            assert_error(await c.get("/extract"), 405, "E109")
    run(go())


# ---------------------------------------------------------------------- overload, timeout, readiness, failures
def test_full_queue_answers_503_with_retry_after_and_nothing_is_lost(tiny_tokenizer):
    gate = threading.Event()
    ex, _ = make_extractor(tiny_tokenizer, gate=gate)
    app = create_app(make_settings(max_batch=1, max_queue=2, max_wait_ms=0, warmup=False, retry_after_s=3),
                     extractor=ex)
    state = app.state.hugie

    async def go():
        async with serving(app) as c:
            try:
                first = asyncio.create_task(c.post("/extract", json={"instruction": PER, "text": "张三"}))
                await until(lambda: state.batcher._running, "first request running")
                queued = [asyncio.create_task(c.post("/extract", json={"instruction": PER, "text": t}))
                          for t in ("李四", "赵云")]
                await until(lambda: state.batcher.depth == 2, "two requests queued")
                r = await c.post("/extract", json={"instruction": PER, "text": "陈静"})
                assert_error(r, 503, "E103", "2 passes queued", "limit is 2", "retry after 3 s")
                assert r.headers["retry-after"] == "3"
                r = await c.post("/extract/batch", json={"items": [{"instruction": PER, "text": "陈静"}]})
                assert_error(r, 503, "E103")
                assert "hugie_queue_depth 2.0" in (await c.get("/metrics")).text
            finally:
                gate.set()
            answers = [texts((await t).json()["spans"]) for t in [first, *queued]]
            assert answers == [["张三"], ["李四"], ["赵云"]]
            assert 'hugie_errors_total{code="E103"} 2.0' in (await c.get("/metrics")).text
    run(go())


def test_request_timeout_is_504_and_leaves_the_queue(tiny_tokenizer):
    gate = threading.Event()
    ex, _ = make_extractor(tiny_tokenizer, gate=gate)
    app = create_app(make_settings(request_timeout_s=0.3, max_batch=1, warmup=False), extractor=ex)

    async def go():
        async with serving(app) as c:
            try:
                rs = await asyncio.gather(c.post("/extract", json={"instruction": PER, "text": "张三"}),
                                          c.post("/extract", json={"instruction": PER, "text": "李四"}))
                for r in rs:
                    assert_error(r, 504, "E104", "0.3 s")
                assert app.state.hugie.batcher.depth == 0
            finally:
                gate.set()
            r = await c.post("/extract", json={"instruction": PER, "text": "赵云"})
            assert texts(r.json()["spans"]) == ["赵云"]
    run(go())


def test_ready_only_after_warmup_health_always(tiny_tokenizer):
    gate = threading.Event()
    ex, _ = make_extractor(tiny_tokenizer, gate=gate)
    app = create_app(make_settings(warmup=True), extractor=ex)

    async def go():
        async with serving(app, wait_ready=False) as c:
            try:
                await until(lambda: app.state.hugie.phase == "warming up", "warm-up started")
                assert (await c.get("/health")).json() == {"status": "ok"}
                assert_error(await c.get("/ready"), 503, "E106", "warming up")
                r = await c.post("/extract", json={"instruction": PER, "text": "张三"})
                assert_error(r, 503, "E106")
                assert r.headers["retry-after"] == "1"
                assert (await c.get("/info")).json()["ready"] is False
            finally:
                gate.set()
            await until(lambda: app.state.hugie.phase == "ready", "ready")
            assert (await c.get("/ready")).json() == {"status": "ready"}
    run(go())


def test_model_that_fails_to_load_is_reported(tmp_path):
    app = create_app(make_settings(model=str(tmp_path / "missing"), backend="torch"))

    async def go():
        async with serving(app, wait_ready=False) as c:
            await until(lambda: app.state.hugie.phase == "failed", "load failed")
            assert_error(await c.get("/health"), 503, "E110", "failed to load")
            assert_error(await c.get("/ready"), 503, "E110")
    run(go())


def test_unexpected_errors_are_500_error_bodies(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer, fail=RuntimeError("boom"))

    async def go():
        async with serving(create_app(make_settings(warmup=False), extractor=ex)) as c:
            r = await c.post("/extract", json={"instruction": PER, "text": "张三"}, headers={"X-Request-ID": "req-42"})
            err = assert_error(r, 500, "E108", "RuntimeError", "req-42")
            assert err["request_id"] == "req-42"
            assert (await c.get("/health")).status_code == 200
    run(go())


# ---------------------------------------------------------------------- auth, cors, ids, metrics, info, docs
def test_api_key_on_and_off(extractor):
    body = {"instruction": PER, "text": "张三"}

    async def go():
        async with serving(create_app(make_settings(api_key="s3cret"), extractor=extractor)) as c:
            r = await c.post("/extract", json=body)
            assert_error(r, 401, "E105", "X-API-Key", "Bearer")
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert_error(await c.post("/extract", json=body, headers={"X-API-Key": "wrong"}), 401, "E105")
            assert_error(await c.post("/extract", json=body, headers={"Authorization": "Bearer wrong"}), 401, "E105")
            assert_error(await c.get("/info"), 401, "E105")
            assert (await c.post("/extract", json=body, headers={"X-API-Key": "s3cret"})).status_code == 200
            assert (await c.post("/extract", json=body, headers={"Authorization": "Bearer s3cret"})).status_code == 200
            assert (await c.post("/extract/batch", json={"items": [body]},
                                 headers={"X-API-Key": "s3cret"})).status_code == 200
            for open_path in ("/health", "/ready", "/metrics", "/openapi.json"):
                assert (await c.get(open_path)).status_code == 200, open_path
        async with serving(create_app(make_settings(), extractor=extractor)) as c:
            assert (await c.post("/extract", json=body)).status_code == 200
            assert (await c.get("/info")).json()["service"]["auth"] is False
    run(go())


def test_cors_is_off_by_default_and_opt_in(extractor):
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}

    async def go():
        async with serving(create_app(make_settings(), extractor=extractor)) as c:
            r = await c.get("/health", headers=origin)
            assert "access-control-allow-origin" not in r.headers
            assert "access-control-allow-origin" not in (await c.options("/extract", headers=preflight)).headers
        app = create_app(make_settings(cors_origins="https://app.example, https://b.example"), extractor=extractor)
        async with serving(app) as c:
            r = await c.get("/health", headers=origin)
            assert r.headers["access-control-allow-origin"] == "https://app.example"
            r = await c.options("/extract", headers=preflight)
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
            r = await c.get("/health", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in r.headers
    run(go())


def test_request_ids_in_and_out(extractor):
    async def go():
        async with serving(create_app(make_settings(), extractor=extractor)) as c:
            r = await c.get("/health", headers={"X-Request-ID": "abc-123"})
            assert r.headers["x-request-id"] == "abc-123"
            r = await c.get("/health", headers={"X-Request-ID": "bad id\twith junk" + "x" * 200})
            assert r.headers["x-request-id"] != "" and " " not in r.headers["x-request-id"]
            a, b = (await c.get("/health")).headers["x-request-id"], (await c.get("/health")).headers["x-request-id"]
            assert a != b
            r = await c.post("/extract", json={"text": "x"}, headers={"X-Request-ID": "trace-7"})
            assert r.json()["error"]["request_id"] == "trace-7"
    run(go())


def test_metrics_info_and_docs(extractor):
    async def go():
        async with serving(create_app(make_settings(max_text_chars=5), extractor=extractor)) as c:
            await c.post("/extract", json={"instruction": PER, "text": "张三"})
            await c.post("/extract", json={"instruction": PER, "text": "张三张三张三"})
            m = (await c.get("/metrics")).text
            assert 'hugie_requests_total{method="POST",route="/extract",status="200"} 1.0' in m
            assert 'hugie_requests_total{method="POST",route="/extract",status="413"} 1.0' in m
            assert 'hugie_request_latency_seconds_count{route="/extract"} 2.0' in m
            assert 'hugie_errors_total{code="E100"} 1.0' in m
            for name in ("hugie_batch_size_bucket", "hugie_queue_depth", "hugie_inflight_requests",
                         "hugie_model_call_seconds_count"):
                assert name in m, name
            info = (await c.get("/info")).json()
            assert info["ready"] is True and info["backend"] == "fake"
            assert info["versions"]["hugie"] and info["versions"]["fastapi"]
            assert info["service"]["max_text_chars"] == 5 and info["extractor"]["threshold"] == 0.5
            assert (await c.get("/docs")).status_code == 200
            spec = (await c.get("/openapi.json")).json()
            assert {"/extract", "/extract/batch", "/health", "/ready", "/metrics", "/info"} <= set(spec["paths"])
    run(go())


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("HUGIE_MAX_BATCH", "7")
    monkeypatch.setenv("HUGIE_CORS_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("HUGIE_API_KEY", "zz-key-9")
    s = Settings()
    assert s.max_batch == 7 and s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key.get_secret_value() == "zz-key-9" and "zz-key-9" not in repr(s)
    monkeypatch.setenv("HUGIE_API_KEY", "")
    assert Settings().api_key is None


def test_serve_command_passes_options_over_environment(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from hugie.cli import app as cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, settings=app.state.hugie.settings))
    monkeypatch.setenv("HUGIE_MAX_QUEUE", "77")
    monkeypatch.setenv("HUGIE_MAX_BATCH", "3")
    result = CliRunner().invoke(cli, ["serve", "--port", "9001", "--max-batch", "8", "--timeout", "5",
                                      "--cors-origin", "https://a.example", "--cors-origin", "https://b.example"])
    assert result.exit_code == 0, result.output
    s = seen["settings"]
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 9001)
    assert (s.max_batch, s.max_queue, s.request_timeout_s) == (8, 77, 5.0)
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    bad = CliRunner().invoke(cli, ["serve", "--max-batch", "0"])
    assert bad.exit_code == 2 and "max_batch" in bad.output
