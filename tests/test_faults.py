"""Fault tests with a small real model: crashes, floods, oversize requests and clients that give up.

* ``hugie batch`` killed with SIGKILL at random points (some while the model loads, some mid-run,
  some with the last line of a file torn at a random byte) and resumed until done: every input id
  ends up exactly once, in input order, and every bad record exactly once in the errors file.
* A server flooded past its queue answers 503 (E103, Retry-After) and nothing else, serves what it
  accepted, and recovers: a burst through the SDK afterwards all succeeds.
* Oversize requests (body, text, batch) are rejected without disturbing concurrent requests.
* A client that times out does not leave work behind: its queued work is dropped at the server's
  timeout (never run), the running call finishes, and the service is idle again.

The model is an untrained tiny GlobalPointerModel saved as a model directory; the servers run
``create_app(Settings(model=DIR))`` (what ``hugie serve`` runs) under uvicorn on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hugie.api import Settings, create_app

from hugie.client import Client, HugieAPIError
from hugie.instructions import TEMPLATES
from tests.conftest import PERSONS, PLACES
from tests.test_client import running_server

REPO = Path(__file__).resolve().parents[1]
PER = TEMPLATES["zh"].for_entity("人名")
SEED = int(os.environ.get("HUGIE_FAULT_SEED", random.randrange(2**32)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(untrained_model_dir):
    return untrained_model_dir


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------- batch CLI: SIGKILL and resume
# Importing torch + transformers costs seconds per process on a busy CI box, so the CLI runs in
# processes forked from a "zygote" that imported everything once (before any torch op, so forking
# is safe). Each child is `hugie batch ...` exactly as the console script runs it, in its own
# process, and it is that process that gets SIGKILL.
ZYGOTE = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
import torch, transformers  # noqa: F401 - imported once, inherited by every fork
import hugie.backends.torch, hugie.batch, hugie.client, hugie.extractor, hugie.modeling  # noqa: F401
from hugie.cli import app

for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        out = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        code = 0
        try:
            app(cmd["argv"], prog_name="hugie")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print(pid, flush=True)
    sys.stdin.readline()  # "reap": only now may the pid be freed (the test never signals a reaped pid)
    _, status = os.waitpid(pid, 0)
    print(status, flush=True)
"""


class Zygote:
    def __init__(self, tmp: Path):
        script = tmp / "zygote.py"
        script.write_text(ZYGOTE.format(repo=str(REPO)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUGIE_")}
        env.setdefault("OMP_NUM_THREADS", "1")  # a tiny model on a shared CI box: one thread is fastest
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**env, "PYTHONPATH": str(REPO)}, text=True, bufsize=1)

    def start(self, argv: list[str], log: Path) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
        return int(self.proc.stdout.readline())

    def wait(self) -> int:
        """Reap the child started last; its status as os.waitpid gives it."""
        self.proc.stdin.write("reap\n")
        line = self.proc.stdout.readline()
        assert line, "the zygote died"
        return int(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def exited(pid: int) -> bool:
    """Whether our (not yet reaped) child has finished: a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def tear_last_line(path: Path, rng: random.Random) -> None:
    """As if the crash had interrupted the write of the last line: keep a random prefix of it
    (possibly in the middle of a UTF-8 character)."""
    raw = path.read_bytes() if path.exists() else b""
    if raw.count(b"\n") < 1:
        return
    body = raw.rstrip(b"\n")
    start = body.rfind(b"\n") + 1
    cut = rng.randrange(start + 1, len(body))
    path.write_bytes(raw[:cut])


def test_batch_cli_killed_at_random_points_then_resumed(tmp_path, model_dir):
    rng = random.Random(SEED)
    n = 240
    names = PERSONS + PLACES
    docs = [{"id": f"doc-{i}", "text": f"{names[i % len(names)]}说：" + "，".join(rng.sample(names, 4)) + "。"}
            for i in range(n)]
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    bad = {17: "{broken", 90: '{"id": "no-text"}', 151: '{"id": "sur", "text": "a\\ud800b"}',
           200: json.dumps({"id": "doc-3", "text": "duplicate id"})}
    for at in sorted(bad):
        lines.insert(at, bad[at])
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    argv = ["batch", str(src), "-o", str(out), "-i", PER, "--model", str(model_dir), "--backend", "torch",
            "--device", "cpu", "--threshold", "0.0", "--top-k", "3", "--batch-size", "4", "--no-progress"]

    zygote = Zygote(tmp_path)
    kills, mid_run = [], 0
    try:
        # the first kill after a random delay (mostly while the model loads), then each once the
        # output holds a random number of records
        points = [("seconds", rng.uniform(0.0, 0.3))]
        points += [("records", k) for k in sorted(rng.sample(range(1, n * 3 // 4), 3))]
        for attempt, (kind, target) in enumerate(points):
            resume = ["--resume"] if attempt else []
            pid = zygote.start(argv + resume + ["--workers", str(1 + attempt % 2)], tmp_path / f"run{attempt}.log")
            t0 = time.monotonic()
            while not exited(pid) and time.monotonic() - t0 < 60:
                if (time.monotonic() - t0 if kind == "seconds" else line_count(out)) >= target:
                    break
                time.sleep(0.001)
            os.kill(pid, signal.SIGKILL)  # our child, alive or a zombie: not reaped before wait()
            status = zygote.wait()
            written = line_count(out)
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            kills.append((kind, round(target, 3), written, killed))
            if killed and 0 < written < n:
                mid_run += 1
            if killed and rng.random() < 0.5:
                tear_last_line(rng.choice([out, errors]), rng)
        zygote.start(argv + ["--resume"], tmp_path / "final.log")
        status = zygote.wait()  # runs to the end
    finally:
        zygote.close()
    print(f"seed {SEED}: kills (kind, target, lines written, killed) {kills}")
    log = (tmp_path / "final.log").read_text(errors="replace")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (SEED, kills, log[-3000:])
    assert mid_run >= 1, f"no kill landed mid-run (seed {SEED}): {kills}"

    records = read_jsonl(out)
    assert [r["id"] for r in records] == [d["id"] for d in docs], f"seed {SEED}: every id exactly once, in order"
    for doc, rec in zip(docs, records):
        assert len(rec["spans"]) == 3
        assert all(doc["text"][s["start"]:s["end"]] == s["text"] for s in rec["spans"])
    failed = read_jsonl(errors)
    assert sorted(e["line"] for e in failed) == [at + 1 for at in sorted(bad)], (SEED, failed)
    assert {e["code"] for e in failed} == {"E020", "E021", "E023"}


# ---------------------------------------------------------------------- servers
class Gate:
    """Holds every model call (on the real backend) until opened; counts the calls."""

    def __init__(self, backend):
        self.backend, self.real = backend, backend.score
        self.open_event = threading.Event()
        self.calls = 0
        self.rows = 0
        self.waiting = 0
        backend.score = self.score

    def score(self, *args):
        self.calls += 1
        self.rows = args[0].input_ids.shape[0]  # (instruction, text window) rows in this call
        self.waiting += 1
        try:
            assert self.open_event.wait(60), "test gate never opened"
        finally:
            self.waiting -= 1
        return self.real(*args)

    def open(self):
        self.open_event.set()


def serve(model_dir, **overrides):
    settings = Settings(_env_prefix="HUGIE_TEST_ISOLATED_", model=str(model_dir), backend="torch", device="cpu",
                        **overrides)
    app = create_app(settings)
    return app, running_server(app)


def gauge(app, name: str) -> float:
    return app.state.hugie.metrics.registry.get_sample_value(name) or 0.0


def wait_until(condition, what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def check_spans(text: str, spans: list[dict]) -> None:
    for s in spans:
        assert 0 <= s["start"] < s["end"] <= len(text) and text[s["start"]:s["end"]] == s["text"]


def test_flooded_server_answers_503_then_recovers(model_dir):
    app, server = serve(model_dir, max_batch=4, max_queue=8, max_wait_ms=0, retry_after_s=1)
    texts = [f"{PERSONS[i % 8]}去了{PLACES[i % 8]}，第{i}次。" for i in range(40)]
    with server as (url, _):
        gate = Gate(app.state.hugie.extractor.backend)
        try:
            async def flood():
                async with httpx.AsyncClient(base_url=url, timeout=60,
                                             limits=httpx.Limits(max_connections=64)) as c:
                    tasks = [asyncio.create_task(c.post("/extract", json={"instruction": PER, "text": t,
                                                                          "threshold": 0.0, "top_k": 2}))
                             for t in texts]
                    # while the model is held, every request is either in the held call, queued, or
                    # already answered (503: the queue takes at most 8)
                    def settled() -> bool:
                        done = sum(t.done() for t in tasks)
                        return gate.waiting == 1 and done + gate.rows + app.state.hugie.batcher.depth == len(tasks)

                    while not settled():
                        await asyncio.sleep(0.01)
                    accepted = gate.rows + app.state.hugie.batcher.depth
                    assert all(t.result().status_code == 503 for t in tasks if t.done())
                    gate.open()
                    return accepted, await asyncio.gather(*tasks)

            accepted, responses = asyncio.run(flood())
        finally:
            gate.open()
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 503}, statuses
        assert statuses.count(200) == accepted <= 4 + 8  # the held call (max_batch 4) + the queue (8)
        for text, r in zip(texts, responses):
            if r.status_code == 503:
                err = r.json()["error"]
                assert err["code"] == "E103" and "limit is 8" in err["message"] and r.headers["retry-after"] == "1"
                assert err["request_id"] == r.headers["x-request-id"]
            else:
                check_spans(text, r.json()["spans"])
        wait_until(lambda: app.state.hugie.batcher.depth == 0 and not app.state.hugie.batcher._running, "drained")

        # recovered: a burst from 16 SDK clients at once, retrying 503s, all get their answers
        burst = [f"{PLACES[i % 8]}欢迎{PERSONS[(i * 3) % 8]}！" for i in range(96)]
        results: dict[int, list] = {}

        def worker(k: int) -> None:
            with Client(url, retries=20, max_backoff=0.05) as c:
                for i in range(k, len(burst), 16):
                    results[i] = c.extract(PER, burst[i], threshold=0.0, top_k=2)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(results) == list(range(len(burst)))
        for i, spans in results.items():
            check_spans(burst[i], [s.model_dump() for s in spans])
        assert httpx.get(url + "/ready").status_code == 200
        wait_until(lambda: gauge(app, "hugie_inflight_requests") == 0, "no request left in flight")
        assert gauge(app, "hugie_queue_depth") == 0


def test_oversize_requests_are_rejected_without_disturbing_concurrent_ones(model_dir):
    app, server = serve(model_dir, max_text_chars=2000, max_body_bytes=60_000, max_batch_items=4, max_wait_ms=20)
    texts = [f"{PERSONS[i % 8]}和{PERSONS[(i + 3) % 8]}在{PLACES[i % 8]}见面。" for i in range(24)]
    with server as (url, _):
        with httpx.Client(base_url=url, timeout=60) as c:  # each request alone first
            alone = [c.post("/extract", json={"instruction": PER, "text": t, "threshold": 0.0}).json()["spans"]
                     for t in texts]

        async def stream(n: int):  # no Content-Length: counted while read
            yield b'{"instruction": "x", "text": "'
            for _ in range(n):
                yield b"a" * 10_000
            yield b'"}'

        big_body = json.dumps({"instruction": PER, "text": "张" * 40_000}).encode()

        async def mixed():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                good = [c.post("/extract", json={"instruction": PER, "text": t, "threshold": 0.0}) for t in texts]
                hostile = [
                    c.post("/extract", content=big_body, headers={"content-type": "application/json"}),
                    c.post("/extract", content=stream(50), headers={"content-type": "application/json"}),
                    c.post("/extract", json={"instruction": PER, "text": "张" * 2001}),
                    c.post("/extract/batch", json={"items": [{"instruction": PER, "text": "张三"}] * 5}),
                    c.post("/extract/batch", json={"items": [{"instruction": PER, "text": "张三"},
                                                             {"instruction": PER, "text": "张" * 2001}]}),
                    c.post("/extract", json={"instruction": "人" * 200, "text": "张三"}),  # E007, in a shared batch
                ]
                order = good + hostile
                random.Random(SEED).shuffle(order)
                done = dict(zip(map(id, order), await asyncio.gather(*order)))
                return [done[id(g)] for g in good], [done[id(h)] for h in hostile]

        good, hostile = asyncio.run(mixed())
        assert [(r.status_code, r.json()["error"]["code"]) for r in hostile] == [
            (413, "E101"), (413, "E101"), (413, "E100"), (413, "E102"), (413, "E100"), (422, "E007")]
        for text, expected, r in zip(texts, alone, good):
            assert r.status_code == 200, r.text
            spans = r.json()["spans"]
            check_spans(text, spans)
            got = {(s["start"], s["end"]): s["score"] for s in spans}
            want = {(s["start"], s["end"]): s["score"] for s in expected}
            assert got.keys() == want.keys()
            assert all(abs(got[k] - want[k]) < 1e-4 for k in got)
        assert gauge(app, "hugie_queue_depth") == 0


def test_a_client_timeout_leaves_no_work_behind(model_dir):
    app, server = serve(model_dir, request_timeout_s=1.0, max_batch=1, max_wait_ms=0)
    state = app.state.hugie
    with server as (url, _):
        gate = Gate(state.extractor.backend)
        outcomes: dict[str, object] = {}

        def give_up(name: str, call) -> None:
            with Client(url, timeout=0.3, retries=0) as c:
                try:
                    outcomes[name] = call(c)
                except HugieAPIError as exc:
                    outcomes[name] = exc

        try:
            first = threading.Thread(target=give_up, args=("first", lambda c: c.extract(PER, "张三去了北京")))
            first.start()
            wait_until(lambda: gate.waiting == 1, "the first request reached the model")
            queued = [threading.Thread(target=give_up, args=(f"queued{i}", lambda c, i=i: c.extract(PER, f"李四{i}")))
                      for i in range(3)]
            queued.append(threading.Thread(target=give_up, args=("batch", lambda c: c.run(
                [{"instruction": PER, "text": n} for n in ("赵云", "陈静", "孙悟空")]))))
            for t in queued:
                t.start()
            for t in [first, *queued]:
                t.join(30)
            # every client gave up after 0.3 s, seeing a connection error (status 0), not an answer
            assert sorted(outcomes) == ["batch", "first", "queued0", "queued1", "queued2"]
            assert all(isinstance(o, HugieAPIError) and o.status == 0 for o in outcomes.values()), outcomes
            # the server gives up too, at its own timeout (1 s): nothing queued, nothing in flight,
            # although the model call that had started is still held
            wait_until(lambda: state.batcher.depth == 0 and gauge(app, "hugie_inflight_requests") == 0,
                       "the server dropped the abandoned requests", limit=15)
            assert gate.waiting == 1
        finally:
            gate.open()
        wait_until(lambda: not state.batcher._running, "the running call finished")
        time.sleep(0.2)
        assert gate.calls == 1, "work queued by clients that gave up was run anyway"
        assert state.metrics.registry.get_sample_value("hugie_errors_total", {"code": "E104"}) == 5
        with Client(url, retries=0) as c:  # and the service serves as before
            check_spans("王小明在上海", [s.model_dump() for s in c.extract(PER, "王小明在上海", threshold=0.0)])
        assert gate.calls == 2
