"""API fuzzing: schemathesis against the live OpenAPI schema of a real ``hugie serve`` process.

One ``hugie serve`` subprocess (a tiny untrained model, small limits so the fuzzer reaches them)
answers schema-valid and schema-violating requests to every operation. The promise checked:
no 5xx ever, and every 4xx is the service's error body ``{"error": {"code", "message",
"request_id"}}`` with the request id that is also in ``X-Request-ID``. Examples are bounded so
this stays a CI test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from hugie.client import Client, HugieAPIError  # noqa: E402
from hugie.instructions import TEMPLATES  # noqa: E402
from tests.test_properties import INSTRUCTIONS, TEXTS  # noqa: E402

PER = TEMPLATES["zh"].for_entity("人名")
EXAMPLES = int(os.environ.get("HUGIE_FUZZ_EXAMPLES", "30"))  # per operation and mode
LIMITS = ["--max-text-chars", "3000", "--max-instruction-chars", "80", "--max-batch-items", "8",
          "--max-body-bytes", "200000", "--timeout", "20", "--max-queue", "256"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(model_dir, *extra: str, timeout: float = 120.0):
    """``hugie serve`` in a subprocess on a free loopback port; returns (process, base URL) once ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUGIE_")}
    env.setdefault("OMP_NUM_THREADS", "1")  # a tiny model on a shared CI box: one thread is fastest
    cmd = [sys.executable, "-m", "hugie.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--model",
           str(model_dir), "--backend", "torch", "--device", "cpu", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url) as client:
            client.wait_until_ready(timeout, poll=0.1, process=proc)
    except HugieAPIError as exc:
        stop_serve(proc)
        raise AssertionError(f"hugie serve never became ready ({exc}): {proc.stderr.read().decode()[-2000:]}") from exc
    return proc, url


def stop_serve(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


@pytest.fixture(scope="module")
def random_model_dir(untrained_model_dir):
    """An untrained tiny model directory (the service path does not need a trained one)."""
    return untrained_model_dir


@pytest.fixture(scope="module")
def server(random_model_dir):
    proc, url = start_serve(random_model_dir, *LIMITS)
    try:
        yield url
    finally:
        stop_serve(proc)


@pytest.fixture(scope="module")
def api_schema(server):
    loaded = schemathesis.openapi.from_url(server + "/openapi.json")
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=EXAMPLES)
    # a schema-valid request may still be too costly for the model's answers (subjects, spans, work: 413);
    # every other answer to a schema-valid request is a 2xx (no ST202)
    loaded.config.checks.positive_data_acceptance.expected_statuses = ["2xx", "413"]
    return loaded


schema = schemathesis.pytest.from_fixture("api_schema")
SEEN: Counter = Counter()  # (operation, status class) -> requests sent by the fuzzer


def header(response, name: str) -> str:
    """A header of an httpx or a schemathesis response (the latter keeps lists of values)."""
    value = response.headers.get(name, "")
    return value[-1] if isinstance(value, list) else value


def check_error_body(response) -> None:
    """A 4xx is always the service's error body, with the request id of the header."""
    assert header(response, "content-type").startswith("application/json"), response.text[:300]
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err.get("code"), str) and err["code"][:1] == "E" and err["code"][1:].isdigit(), err
    assert isinstance(err.get("message"), str) and err["message"], err
    assert err.get("request_id") and err["request_id"] == header(response, "x-request-id"), err


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_never_get_a_5xx_and_every_4xx_is_an_error_body(case, server):
    response = case.call(base_url=server, timeout=60)
    SEEN[case.operation.label, f"{response.status_code // 100}xx"] += 1
    assert response.status_code < 500, (response.status_code, response.text[:500], case.as_curl_command())
    if 400 <= response.status_code < 500:
        check_error_body(response)
    case.validate_response(response, checks=[not_a_server_error, content_type_conformance,
                                             status_code_conformance, response_schema_conformance,
                                             positive_data_acceptance])


_SURROGATE = re.compile("[\ud800-\udfff]")
# half the time with the lone surrogates taken out, so that most requests are answered
_TEXTS = st.one_of(TEXTS, TEXTS.map(lambda t: _SURROGATE.sub("", t)))
_INSTRUCTIONS = st.one_of(st.sampled_from([PER, TEMPLATES["en"].for_entity("person")]), INSTRUCTIONS)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@example(items=[{"instruction": PER, "text": "张三\u200b去了北京😀\r\n e\u0301 \ufdfa。"}], batch=False)
@example(items=[{"instruction": PER, "text": "李四\x00在👩\u200d👩\u200d👧上海"},
                {"instruction": TEMPLATES["en"].for_entity("person"), "text": "Alice\u2028went to Paris\ufeff."}],
         batch=True)
@given(items=st.lists(st.fixed_dictionaries({"instruction": _INSTRUCTIONS, "text": _TEXTS},
                                            optional={"threshold": st.sampled_from([0.0, 0.5, 0.99]),
                                                      "top_k": st.integers(1, 20)}), min_size=1, max_size=3),
       batch=st.booleans())
def test_well_formed_requests_with_hostile_content(server, items, batch):
    """Well-formed requests carrying hostile Unicode, so the 200 path is fuzzed too.
    Offsets must index the text exactly as the client sent it, through JSON and back."""
    for item in items:
        item.setdefault("top_k", 20)
    body = {"items": items} if batch else items[0]
    raw = json.dumps(body, ensure_ascii=True).encode()  # lone surrogates travel as \ud800 escapes
    r = httpx.post(server + ("/extract/batch" if batch else "/extract"), content=raw, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:300])
    SEEN["well-formed " + ("batch" if batch else "single"), f"{r.status_code // 100}xx"] += 1
    # what the server reads: adjacent high+low surrogate escapes pair up into one character
    parsed = json.loads(raw)
    sent = parsed["items"] if batch else [parsed]
    lone = any(_SURROGATE.search(v) for i in sent for v in (i["instruction"], i["text"]))
    if r.status_code != 200:
        check_error_body(r)
        code = r.json()["error"]["code"]
        assert code in {"E100", "E107", "E007", "E002"}, r.text[:300]
        if code == "E107":
            assert lone, r.text[:300]
        if code == "E002":
            assert any(not i["instruction"].strip() for i in sent), r.text[:300]
        return
    assert not lone
    results = r.json()["results"] if batch else [r.json()]
    assert len(results) == len(sent)
    for item, result in zip(sent, results):
        text = item["text"]
        assert len(result["spans"]) <= item["top_k"]
        for span in result["spans"]:
            assert 0 <= span["start"] < span["end"] <= len(text) and text[span["start"]:span["end"]] == span["text"]
            assert span["score"] >= item.get("threshold", 0.0)


def test_hand_made_hostile_bodies(server):
    """What a schema-driven fuzzer rarely builds: raw bytes, odd escapes, wrong types, huge numbers."""
    big = '{"instruction": "%s", "text": "%s"}' % (PER, "a" * 250_000)
    cases = [
        b"", b"null", b"[]", b"{", b'{"text": "x", "instruction": "y"', b"\xff\xfe{}", b"{}" * 1000,
        b'{"instruction": "x", "text": "\xff\xfe"}', b'{"instruction": "x", "text": "\xed\xa0\x80"}',
        '{"instruction": "%s", "text": "a\\ud800b"}' % PER,                       # lone surrogate escape
        '{"instruction": "\\udfff", "text": "ab"}',
        '{"instruction": "%s", "text": "\\ud83d\\ude00 \\u0000 \\u200b e\\u0301"}' % PER,  # a pair: fine
        '{"instruction": "%s", "text": "ok", "\\ud800": 1}' % PER,
        '{"schema": {"entities": ["x"], "relations": [{"subject": "x", "predicate": "y", "object": "\\ud800"}]},'
        ' "text": "ab"}',
        '{"instruction": "%s", "text": "ab", "threshold": NaN}' % PER,
        '{"instruction": "%s", "text": "ab", "threshold": 1e400}' % PER,
        '{"instruction": "%s", "text": "ab", "top_k": 1e30}' % PER,
        '{"instruction": "%s", "text": "ab", "top_k": 100000000000000000000000000000}' % PER,
        '{"instruction": "%s", "text": "ab", "top_k": true}' % PER,
        '{"instruction": "%s", "text": ["ab"]}' % PER,
        '{"instruction": "%s", "text": "ab", "instruction": "again"}' % PER,
        '{"items": [%s]}' % ",".join(['{"instruction": "x", "text": "y"}'] * 9),
        '{"items": [{"instruction": "x", "text": "y"}, {"text": "\\ud800", "instruction": "x"}]}',
        '{"items": "nope"}',
        big,
        '{"instruction": "%s", "text": "%s"}' % (PER, "\\u200b" * 2999),
        '{"instruction": "%s", "text": "%s"}' % ("人" * 199, "张三"),              # E007: too many tokens
        '{"schema": {"entities": ["%s"]}, "text": "张三"}' % ("人" * 150),
        '[' * 5000 + ']' * 5000,
    ]
    with httpx.Client(base_url=server, timeout=60) as client:
        for body in cases:
            raw = body.encode() if isinstance(body, str) else body
            for path in ("/extract", "/extract/batch"):
                r = client.post(path, content=raw, headers={"content-type": "application/json"})
                assert r.status_code < 500, (path, raw[:120], r.status_code, r.text[:300])
                if r.status_code >= 400:
                    check_error_body(r)
                else:
                    r.json()  # a 200 is valid JSON
        for headers in ({"content-type": "text/plain"}, {"content-type": "application/json; charset=latin-1"},
                        {"content-type": "application/json", "x-request-id": "../" * 100}):
            r = client.post("/extract", content=b'{"instruction": "x", "text": "y"}', headers=headers)
            assert r.status_code < 500, (headers, r.status_code, r.text[:300])
            if r.status_code >= 400:
                check_error_body(r)
        r = client.post("/extract", content=b"{" + b" " * 300_000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "E101"
        # still answering, and nothing is stuck in the queue
        assert client.get("/ready").status_code == 200
        ok = client.post("/extract", json={"instruction": PER, "text": "张三去了北京", "threshold": 0.0})
        assert ok.status_code == 200 and all(0 <= s["start"] < s["end"] <= 6 for s in ok.json()["spans"])
        metrics = client.get("/metrics").text
        assert "hugie_queue_depth 0.0" in metrics
        assert 'status="500"' not in metrics


def test_the_fuzzer_reached_both_sides_of_the_extract_endpoints():
    """A guard against a silent no-op: every extract endpoint got fuzzed requests rejected with 4xx
    (schemathesis) and well-formed hostile ones answered with 200 (the hypothesis test above)."""
    if not SEEN:
        pytest.skip("run together with the fuzz tests")
    for key in (("POST /extract", "4xx"), ("POST /extract/batch", "4xx"), ("well-formed single", "2xx"),
                ("well-formed batch", "2xx")):
        assert SEEN[key] >= 1, (key, dict(SEEN))
    assert not any(status == "5xx" for _, status in SEEN), dict(SEEN)
