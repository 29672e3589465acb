"""Load test: N requests from C concurrent SDK clients against ``hugie serve`` on loopback.

On demand, not in CI. It starts ``hugie serve`` in a subprocess on 127.0.0.1 (or uses ``--url``,
which must be a loopback address), warms it up, then sends ``--requests`` extractions (default
10 000) from ``--concurrency`` SDK clients (default 32; each an ``hugie.client.AsyncClient`` with
its own connection) and reports p50/p90/p99/max latency, throughput, errors, and the server's RSS
before and after. Bounded: at most 200 000 requests, 512 clients and ``--time-limit`` seconds of
sending (default 600); work in flight at the deadline finishes, nothing new starts.

Goals (printed as PASS/FAIL): 0 errors, server RSS growth < 5 % over the run (measured after the
warm-up, so one-off allocations do not count), p99 <= 3 x p50.

Usage:
  python benchmarks/load_test.py                          # a tiny untrained model, built on the fly
  python benchmarks/load_test.py --train                  # the tiny model trained on the synthetic task (~1 min)
  python benchmarks/load_test.py --model DIR -- --max-batch 16 --threads 2   # after --: `hugie serve` options
  python benchmarks/load_test.py --url http://127.0.0.1:8000 --pid 1234      # an already running server
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
MAX_REQUESTS, MAX_CONCURRENCY = 200_000, 512


# ---------------------------------------------------------------------- the server
def build_tiny_model(directory: Path, train: bool) -> Path:
    """The test suite's tiny model (2 layers, hidden 64): untrained, or trained on the synthetic task."""
    sys.path.insert(0, str(REPO))
    from hugie.tokenization import HugieTokenizer, build_unigram_tokenizer
    from tests.conftest import tiny_model, tiny_pieces

    tok = HugieTokenizer(build_unigram_tokenizer(tiny_pieces(), unk_id=3), max_length=128)
    if train:
        from tests.helpers import train_tiny

        model = train_tiny(tok, steps=260)
    else:
        model = tiny_model(tok)
    model.save_pretrained(directory)
    tok.save(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise SystemExit(f"cannot resolve {host!r}: {exc}") from None
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"refusing to load-test {url}: not a loopback address ({', '.join(sorted(addresses))})")


def start_server(model: Path, serve_args: list[str], log_path: Path, timeout: float = 300.0,
                 torch_threads: int | None = None):
    from hugie.client import Client, HugieAPIError

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUGIE_")}
    if torch_threads:
        env.update(OMP_NUM_THREADS=str(torch_threads), MKL_NUM_THREADS=str(torch_threads))
    cmd = [sys.executable, "-m", "hugie.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--model",
           str(model), "--backend", "torch", "--device", "cpu", "--log-level", "warning", *serve_args]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url) as client:
            client.wait_until_ready(timeout, process=proc)
    except HugieAPIError as exc:
        stop_server(proc)
        raise SystemExit(f"hugie serve did not become ready ({exc}); see {log_path}") from exc
    return proc, url


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def rss_mib(pid: int | None) -> float | None:
    """Resident set size of ``pid`` in MiB (Linux /proc; psutil elsewhere)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - RSS is reported as unknown
        return None


def server_counts(url: str) -> Counter:
    """``/extract`` answers so far by status, from /metrics."""
    out: Counter = Counter()
    text = httpx.get(url + "/metrics", timeout=10).text
    for m in re.finditer(r'^hugie_requests_total\{[^}]*route="/extract",status="(\d+)"\} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] += int(float(m.group(2)))
    return out


# ---------------------------------------------------------------------- the clients
def workload(n: int, seed: int) -> list[tuple[str, str]]:
    """(instruction, text) pairs: short zh/en sentences, one in ten a long (windowed) paragraph."""
    sys.path.insert(0, str(REPO))
    from hugie.instructions import TEMPLATES
    from tests.conftest import synthetic_records

    rng = random.Random(seed)
    records = synthetic_records(400, seed=seed)
    asks = {"zh": [TEMPLATES["zh"].for_entity(t) for t in ("人名", "地名")],
            "en": [TEMPLATES["en"].for_entity(t) for t in ("person", "location")]}
    out = []
    for _ in range(n):
        rec = rng.choice(records)
        lang = "en" if rec["text"].isascii() else "zh"
        text = rec["text"]
        if rng.random() < 0.1:
            text = (" " if lang == "en" else "").join(r["text"] for r in rng.sample(records, 12)
                                                      if r["text"].isascii() == (lang == "en"))
        out.append((rng.choice(asks[lang]), text))
    return out


async def drive(url: str, pairs: list[tuple[str, str]], concurrency: int, time_limit: float, top_k: int | None,
                timeout: float) -> dict:
    from hugie.client import AsyncClient, HugieAPIError

    latencies: list[float] = []
    errors: Counter = Counter()
    next_index = 0
    deadline = time.monotonic() + time_limit

    async def client_loop(client) -> None:
        nonlocal next_index
        while next_index < len(pairs) and time.monotonic() < deadline:
            instruction, text = pairs[next_index]
            next_index += 1
            start = time.perf_counter()
            try:
                spans = await client.extract(instruction, text, top_k=top_k)
                if any(text[s.start:s.end] != s.text for s in spans):
                    errors["wrong offsets"] += 1
                    continue
            except HugieAPIError as exc:
                errors[f"{exc.status} {exc.code}"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                errors[type(exc).__name__] += 1
                continue
            latencies.append(time.perf_counter() - start)

    # clients are made before the clock starts: each builds an SSL context (tens of ms, blocking)
    clients = [AsyncClient(url, timeout=timeout) for _ in range(concurrency)]
    try:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in clients))
        seconds = time.perf_counter() - start
    finally:
        for c in clients:
            await c.aclose()
    return {"latencies": latencies, "errors": errors, "seconds": seconds, "sent": next_index}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ---------------------------------------------------------------------- report
def report(args, result: dict, rss: dict, counts: Counter, model_desc: str, serve_args: list[str]) -> dict:
    lat = [x * 1000 for x in result["latencies"]]
    ok, errs = len(lat), sum(result["errors"].values())
    p50, p90, p99 = (percentile(lat, q) for q in (0.5, 0.9, 0.99))
    growth = None
    if rss["before"] and rss["after"]:
        growth = (rss["after"] - rss["before"]) / rss["before"] * 100
    ratio = p99 / p50 if p50 and p50 == p50 else float("nan")
    goals = {"errors": errs == 0, "rss": growth is not None and growth < 5.0, "tail": ratio <= 3.0}

    def fmt_rss(v) -> str:
        return f"{v:.1f}" if v is not None else "n/a"

    def verdict(key: str) -> str:
        return "PASS" if goals[key] else "FAIL"

    rows = [
        ("requests sent / ok / errors", f"{result['sent']} / {ok} / {errs}", "0 errors", verdict("errors")),
        ("concurrent SDK clients", f"{args.concurrency}", "", ""),
        ("wall time", f"{result['seconds']:.1f} s", "", ""),
        ("throughput", f"{ok / result['seconds']:.0f} req/s", "", ""),
        ("latency p50 / p90 / p99 / max", f"{p50:.1f} / {p90:.1f} / {p99:.1f} / {max(lat, default=0):.1f} ms", "", ""),
        ("p99 / p50", f"{ratio:.2f}", "<= 3", verdict("tail")),
        ("server RSS ready / before / after", f"{fmt_rss(rss['ready'])} / {fmt_rss(rss['before'])} / "
                                              f"{fmt_rss(rss['after'])} MiB", "", ""),
        ("server RSS growth over the run", f"{growth:+.2f} %" if growth is not None else "n/a", "< 5 %",
         verdict("rss")),
        ("server answers during the run", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "n/a",
         "", ""),
    ]
    lines = ["| metric | value | goal | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    threads = f", OMP_NUM_THREADS={args.torch_threads}" if args.torch_threads else ""
    env = (f"{model_desc}; `hugie serve` {' '.join(serve_args) or '(defaults)'}{threads}; {os.cpu_count()} CPUs "
           f"({platform.machine()}), Python {platform.python_version()}; {args.warmup} warm-up requests first")
    table = "\n".join(lines)
    print(f"\n{env}\n\n{table}\n")
    if result["errors"]:
        print("errors:", dict(result["errors"]))
    return {"table": table, "environment": env, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "throughput": ok / result["seconds"], "ok": ok, "errors": dict(result["errors"]), "rss_mib": rss,
            "rss_growth_pct": growth, "server_statuses": dict(counts), "goals": goals}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model dir to serve (default: the tiny test model, built on the fly)")
    ap.add_argument("--train", action="store_true", help="train the tiny model first (~1 min) instead of random")
    ap.add_argument("--url", help="an already running server (loopback only); no server is started")
    ap.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--time-limit", type=float, default=600.0, help="stop sending after this many seconds")
    ap.add_argument("--top-k", type=int, default=10, help="top_k per request (0: none)")
    ap.add_argument("--timeout", type=float, default=60.0, help="SDK per-request timeout, s")
    ap.add_argument("--torch-threads", type=int, help="the server's torch intra-op threads (OMP_NUM_THREADS); "
                                                      "1 is best on a box busy with other work")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    args = ap.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.concurrency <= MAX_CONCURRENCY:
        ap.error(f"--requests must be in 1..{MAX_REQUESTS} and --concurrency in 1..{MAX_CONCURRENCY}")
    if not 0 < args.time_limit <= 3600:
        ap.error("--time-limit must be in (0, 3600] seconds")
    top_k = args.top_k or None

    with tempfile.TemporaryDirectory(prefix="hugie-load-") as tmp:
        proc = None
        if args.url:
            require_loopback(args.url)
            url, pid, model_desc = args.url.rstrip("/"), args.pid, f"server at {args.url}"
        else:
            if args.model:
                model, model_desc = Path(args.model), f"model {args.model}"
            else:
                model = build_tiny_model(Path(tmp) / "tiny", args.train)
                model_desc = f"tiny test model (2 layers, hidden 64, {'trained' if args.train else 'untrained'})"
            print(f"starting hugie serve ({model_desc}) ...", file=sys.stderr)
            proc, url = start_server(model, serve_args, Path(tmp) / "serve.log", torch_threads=args.torch_threads)
            pid = proc.pid
        try:
            pairs = workload(args.warmup + args.requests, args.seed)
            gc.collect()
            gc.freeze()  # the client's own long-lived objects: no collector pauses in the measurement
            rss = {"ready": rss_mib(pid)}
            if args.warmup:
                print(f"warming up ({args.warmup} requests) ...", file=sys.stderr)
                asyncio.run(drive(url, pairs[:args.warmup], args.concurrency, args.time_limit, top_k, args.timeout))
            rss["before"] = rss_mib(pid)
            counts_before = server_counts(url)
            print(f"sending {args.requests} requests from {args.concurrency} clients ...", file=sys.stderr)
            result = asyncio.run(drive(url, pairs[args.warmup:], args.concurrency, args.time_limit, top_k,
                                       args.timeout))
            rss["after"] = rss_mib(pid)
            counts = server_counts(url) - counts_before
            counts = Counter({k: v for k, v in counts.items() if v > 0})
        finally:
            if proc is not None:
                stop_server(proc)
        out = report(args, result, rss, counts, model_desc, serve_args)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2, ensure_ascii=False))
    return 0 if all(out["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
