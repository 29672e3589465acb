"""What one request may cost: the reproductions of abusive requests get their catalogued errors, before their
work where it can be known, and abandoned work stops between model calls."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import httpx
import pytest
import uvicorn
from hugie.api import create_app

from hugie.errors import HugieError
from hugie.extractor import Extractor
from hugie.limits import RequestLimits
from tests.test_api import PER, make_extractor, make_settings, run, serving
from tests.test_client import running_server

FANOUT = "张三去了北京，李四在上海见到了王五和赵六。张三去了北京，李四在上海见到了王五和赵六"
NAMES = [("张三", 0.9), ("李四", 0.8), ("王五", 0.7), ("赵六", 0.6)]


def test_fanout_schema_at_threshold_zero_is_refused_before_any_work(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: NAMES})
    limits = RequestLimits(min_subject_threshold=0.05)
    request = {"text": FANOUT, "threshold": 0, "schema": {"relations": [{"subject": "人名", "predicate": "p"}]}}
    with pytest.raises(HugieError) as err:
        ex.run([request], limits=limits)
    assert err.value.code == "E115" and "0.05" in err.value.message
    assert backend.calls == [], "refused before the model ran"


def test_subjects_per_relation_are_capped_before_their_passes(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: NAMES})
    request = {"text": FANOUT, "schema": {"relations": [{"subject": "人名", "predicate": "p"}]}, "threshold": 0.1}
    with pytest.raises(HugieError) as err:
        ex.run([request], limits=RequestLimits(max_subjects=3))
    assert err.value.code == "E113" and "found 4 subjects" in err.value.message and "limit is 3" in err.value.message
    assert len(backend.calls) == 1, "the entity pass ran, no relation pass did"
    ok = ex.run([request], limits=RequestLimits(max_subjects=4))[0]
    assert len(ok.relations) == 0 and len(backend.calls) == 3


def test_type_and_relation_counts_and_work_are_capped_before_any_work(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: NAMES})
    types = [f"类型{i}" for i in range(1000)]
    cases = [({"text": "张三", "entities": types}, RequestLimits(max_entity_types=64), "E112", "1000 entity types"),
             ({"text": "张三", "schema": {"entities": types}}, RequestLimits(max_entity_types=64), "E112",
              "1000 entity types"),
             ({"text": "张三", "schema": {"relations": [{"subject": "人名", "predicate": f"p{i}"} for i in range(9)]}},
              RequestLimits(max_relations=8), "E112", "9 relations"),
             ({"text": "张" * 500, "entities": ["人名", "地名"]}, RequestLimits(max_pass_chars=999), "E116",
              "2 passes over 500 characters")]
    for request, limits, code, words in cases:
        with pytest.raises(HugieError) as err:
            ex.run([request], limits=limits)
        assert err.value.code == code and words in err.value.message, err.value
    assert backend.calls == []


def test_spans_per_answer_are_capped(untrained_model_dir):
    ex = Extractor.load(untrained_model_dir, backend="torch", device="cpu")
    text = "张三去了北京。" * 200  # 1,400 characters at threshold 0: every candidate span
    with pytest.raises(HugieError) as err:
        ex.run([{"text": text, "instruction": PER, "threshold": 0.0}], limits=RequestLimits(max_spans=500))
    assert err.value.code == "E114" and "more than 500" in err.value.message
    capped = ex.run([{"text": text, "instruction": PER, "threshold": 0.0, "top_k": 5}],
                    limits=RequestLimits(max_spans=50000))[0]
    assert len(capped.spans) == 5


def test_one_request_over_a_limit_does_not_fail_the_others(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer, {PER: NAMES})
    results = ex.run([{"text": FANOUT, "instruction": PER}, {"text": "张三", "entities": ["a", "b", "c"]}],
                     limits=RequestLimits(max_entity_types=2), return_errors=True)
    assert {s.text for s in results[0].spans} == {"张三", "李四"}
    assert isinstance(results[1], HugieError) and results[1].code == "E112"


def test_cancelled_work_stops_between_model_calls(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: NAMES})
    ex.batch_size = 1
    cancel = threading.Event()
    real = backend.score

    def score(*args):
        cancel.set()  # the caller gives up while the first call runs
        return real(*args)

    backend.score = score
    with pytest.raises(HugieError) as err:
        ex.run([{"text": t, "instruction": PER} for t in ("张三", "李四", "王五")], cancel=cancel)
    assert err.value.code == "E117" and len(backend.calls) == 1


def test_the_service_answers_limits_with_413_and_422(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: NAMES})

    async def go():
        settings = make_settings(warmup=False, max_entity_types=4, max_subjects=3)
        async with serving(create_app(settings, extractor=ex)) as c:
            r = await c.post("/extract", json={"text": FANOUT, "threshold": 0, "schema": {
                "relations": [{"subject": "人名", "predicate": "p"}]}})
            assert r.status_code == 422 and r.json()["error"]["code"] == "E115"
            r = await c.post("/extract", json={"text": FANOUT, "entities": [f"t{i}" for i in range(5)]})
            assert r.status_code == 413 and r.json()["error"]["code"] == "E112"
            r = await c.post("/extract", json={"text": FANOUT, "threshold": 0.1, "schema": {
                "relations": [{"subject": "人名", "predicate": "p"}]}})
            assert r.status_code == 413 and r.json()["error"]["code"] == "E113"
            small = await c.post("/extract", json={"text": "张三", "instruction": PER})
            assert small.status_code == 200
            metrics = (await c.get("/metrics")).text
            assert "hugie_batch_size_sum" in metrics
    run(go())


def test_auth_is_checked_before_the_body_is_validated(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)

    async def go():
        async with serving(create_app(make_settings(warmup=False, api_key="k"), extractor=ex)) as c:
            r = await c.post("/extract", json={"bogus": 1})
            assert r.status_code == 401 and r.json()["error"]["code"] == "E105"
            r = await c.post("/extract", json={"bogus": 1}, headers={"X-API-Key": "k"})
            assert r.status_code == 422
            r = await c.post("/extract/batch", content=b"{not json", headers={"Authorization": "Bearer no"})
            assert r.status_code == 401
    run(go())


def test_a_timed_out_request_stops_its_model_work(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: NAMES})
    ex.batch_size = 1
    real = backend.score

    def slow(*args):
        time.sleep(0.1)
        return real(*args)

    backend.score = slow
    texts = [f"张三第{i}次去了北京" for i in range(40)]  # 40 model calls of 0.1 s

    async def go():
        settings = make_settings(warmup=False, request_timeout_s=0.5, max_text_chars=5000)
        async with serving(create_app(settings, extractor=ex)) as c:
            r = await c.post("/extract/batch", json={"items": [{"text": t, "instruction": PER} for t in texts]})
            assert r.status_code == 504
            await asyncio.sleep(1.0)
            stopped = len(backend.calls)
            await asyncio.sleep(0.5)
            assert len(backend.calls) == stopped < 40, "the abandoned work stopped between model calls"
    run(go())


def test_shutdown_past_the_grace_period_answers_503_json(tiny_tokenizer):
    gate = threading.Event()
    ex, backend = make_extractor(tiny_tokenizer, gate=gate)
    app = create_app(make_settings(warmup=False, retry_after_s=2), extractor=ex)
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", timeout_graceful_shutdown=0.5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.02)
    answers: list = []

    def call(i):
        answers.append(httpx.post(url + "/extract", json={"text": f"张三{i}", "instruction": PER}, timeout=30))

    callers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in callers:
        t.start()
    for _ in range(500):
        if app.state.hugie.metrics.inflight._value.get() >= 4:
            break
        time.sleep(0.01)
    server.should_exit = True
    for t in callers:
        t.join(30)
    gate.set()
    thread.join(30)
    sock.close()
    assert len(answers) == 4
    for r in answers:
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/json"), r.text
        assert r.json()["error"]["code"] == "E111" and r.headers["retry-after"] == "2"


def test_an_oversize_body_gets_its_413_not_a_reset(tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)
    with running_server(create_app(make_settings(warmup=False, max_body_bytes=1000), extractor=ex)) as (url, _):
        body = json.dumps({"text": "张" * 3_000_000, "instruction": PER}, ensure_ascii=False).encode()  # 9 MB
        request = urllib.request.Request(url + "/extract", data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 413
        assert json.loads(err.value.read())["error"]["code"] == "E101"


def test_top_k_answers_a_pass_that_finds_more_spans_than_the_cap(untrained_model_dir):
    ex = Extractor.load(untrained_model_dir, backend="torch", device="cpu")
    text = "张三去了北京。" * 200
    request = {"text": text, "instruction": PER, "threshold": 0.0, "top_k": 5}
    capped = ex.run([request], limits=RequestLimits(max_spans=100))[0]
    uncapped = ex.run([request])[0]
    assert [(s.start, s.end) for s in capped.spans] == [(s.start, s.end) for s in uncapped.spans]
    both = ex.run([request, {**request, "top_k": None}], limits=RequestLimits(max_spans=100), return_errors=True)
    assert len(both[0].spans) == 5 and isinstance(both[1], HugieError) and both[1].code == "E114"


def test_a_short_request_does_not_wait_behind_a_long_one(tiny_tokenizer):
    ex, backend = make_extractor(tiny_tokenizer, {PER: NAMES})
    gate, real = threading.Event(), backend.score

    def score(batch, *args):
        if batch.input_ids.shape[1] > 40:  # the long text's calls hold until the short answer is in
            assert gate.wait(30), "the gate never opened"
        return real(batch, *args)

    backend.score = score

    async def go():
        settings = make_settings(warmup=False, fast_lane_chars=50, max_text_chars=5000)
        async with serving(create_app(settings, extractor=ex)) as c:
            long = asyncio.ensure_future(c.post("/extract", json={"text": "张三去了北京。" * 30, "instruction": PER}))
            await asyncio.sleep(0.3)
            short = await c.post("/extract", json={"text": "张三来了", "instruction": PER})
            assert short.status_code == 200 and not long.done(), "answered while the long one still runs"
            gate.set()
            assert (await long).status_code == 200
    run(go())
