"""Abuse test: small requests' latency while abusive ones hit ``hugie serve``, side by side with an idle server.

On demand, not in CI. It starts ``hugie serve`` on 127.0.0.1 (embedded model unless ``--model``), measures
``--small`` small requests (one instruction over a short sentence, ``--clients`` at a time) on the idle server,
then again while abusers send, in a loop, the requests an attacker or a careless user would (a relation schema at
threshold 0 that fans out, an instruction at threshold 0 over 5,000 characters, 1,000 entity types, a text at the
length limit, a 9 MB body), each one every ``--interval`` seconds (default 1; 0 floods). Bounded: ``--seconds``
of abuse at most (default 60), loopback only. Reports p50/p99 of the small requests in both phases, what the
abusers got back (status codes), and the server's RSS before and after. Goals (PASS/FAIL): loaded p99 <= 3 x
idle p99; RSS after within 10 % of before; no 5xx.

  python benchmarks/abuse_test.py [--model DIR] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from hugie.client import Client

REPO = Path(__file__).resolve().parents[1]
PER = "找到文章中所有【人名】类型的实体？"
SMALL = {"text": "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。", "instruction": PER}
FANOUT_TEXT = "张三去了北京，李四在上海见到了王五和赵六。张三去了北京，李四在上海见到了王五和赵六"


def abusive_bodies(max_text_chars: int) -> dict[str, bytes]:
    sentence = "张三去了北京，李四在上海见到了王五和赵六。"
    bodies = {
        "fan-out schema, threshold 0": {"text": FANOUT_TEXT, "threshold": 0,
                                        "schema": {"relations": [{"subject": "人名", "predicate": "p"}]}},
        "fan-out schema, threshold 0.05": {"text": FANOUT_TEXT, "threshold": 0.05,
                                           "schema": {"relations": [{"subject": "人名", "predicate": "p"}]}},
        "instruction, threshold 0, 5,000 chars": {"text": (sentence * 300)[:5000], "threshold": 0, "instruction": PER},
        "1,000 entity types": {"text": sentence, "schema": {"entities": [f"类型{i}" for i in range(1000)]}},
        "text at the length limit": {"text": (sentence * 2000)[:max_text_chars], "instruction": PER},
    }
    out = {name: json.dumps(body, ensure_ascii=False).encode() for name, body in bodies.items()}
    out["9 MB body"] = json.dumps({"text": "张" * 3_000_000, "instruction": PER}, ensure_ascii=False).encode()
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def small_latencies(url: str, n: int, clients: int) -> tuple[list[float], Counter]:
    latencies, statuses = [], Counter()
    left = [n]

    async def client():
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while left[0] > 0:
                left[0] -= 1
                start = time.perf_counter()
                r = await http.post("/extract", json=SMALL)
                latencies.append(time.perf_counter() - start)
                statuses[r.status_code] += 1
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, statuses


def abuse(url: str, bodies: dict[str, bytes], stop: threading.Event, seen: dict[str, Counter],
          interval: float) -> None:
    """One thread per abusive request, each sending it every ``interval`` seconds (or as soon as the last one
    was answered, if that took longer) until ``stop``."""
    def loop(name: str, body: bytes) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not stop.wait(0 if not seen[name] else interval):
                try:
                    r = http.post("/extract", content=body, headers={"content-type": "application/json"})
                    code = f"{r.status_code} {r.json().get('error', {}).get('code', '')}".strip()
                except (httpx.HTTPError, ValueError) as exc:
                    code = type(exc).__name__
                seen[name][code] += 1
    threads = [threading.Thread(target=loop, args=item, daemon=True) for item in bodies.items()]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(180)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Model directory (default: the embedded one).")
    parser.add_argument("--small", type=int, default=200, help="Small requests per phase.")
    parser.add_argument("--clients", type=int, default=2, help="Small-request clients at a time.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Longest abuse phase.")
    parser.add_argument("--only", help="Comma-separated words: run only the abusers whose name has one of them.")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="Seconds between one abuser's requests (0: a flood, as fast as answered).")
    args, serve_args = parser.parse_known_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "hugie.cli", "serve", "--port", str(port), *serve_args]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(url) as client:
            client.wait_until_ready(180, process=proc)
            info = client.info()
        max_text = info["service"]["max_text_chars"]
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; model {info.get('model')}")
        asyncio.run(small_latencies(url, 20, args.clients))  # warm-up
        rss_before = rss_mib(proc.pid)
        idle, idle_status = asyncio.run(small_latencies(url, args.small, args.clients))
        bodies = {name: body for name, body in abusive_bodies(max_text).items()
                  if not args.only or any(word in name for word in args.only.split(","))}
        stop, seen = threading.Event(), {name: Counter() for name in bodies}
        abusers = threading.Thread(target=abuse, args=(url, bodies, stop, seen, args.interval))
        abusers.start()
        time.sleep(2.0)  # let the abuse start
        deadline = threading.Timer(args.seconds, stop.set)
        deadline.start()
        loaded, loaded_status = asyncio.run(small_latencies(url, args.small, args.clients))
        stop.set()
        deadline.cancel()
        abusers.join(300)
        time.sleep(1.0)
        rss_after = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    p50i, p99i = statistics.median(idle) * 1000, percentile(idle, 0.99) * 1000
    p50l, p99l = statistics.median(loaded) * 1000, percentile(loaded, 0.99) * 1000
    print("\n| small requests | n | p50 ms | p99 ms | statuses |\n|---|---:|---:|---:|---|")
    print(f"| idle server | {len(idle)} | {p50i:.1f} | {p99i:.1f} | {dict(idle_status)} |")
    print(f"| under abuse | {len(loaded)} | {p50l:.1f} | {p99l:.1f} | {dict(loaded_status)} |")
    print("\n| abusive request | answers |\n|---|---|")
    for name, counts in seen.items():
        print(f"| {name} | {dict(counts)} |")
    growth = (rss_after - rss_before) / rss_before * 100
    print(f"\nserver RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after ({growth:+.1f} %)")
    fivexx = sum(n for c in [idle_status, loaded_status] for s, n in c.items() if s >= 500)
    fivexx += sum(n for counts in seen.values() for code, n in counts.items() if code.startswith("5"))
    for goal, ok in ((f"loaded p99 {p99l:.0f} ms <= 3 x idle p99 {p99i:.0f} ms", p99l <= 3 * p99i),
                     (f"RSS growth {growth:+.1f} % within 10 %", abs(growth) <= 10), (f"{fivexx} 5xx", fivexx == 0)):
        print(("PASS " if ok else "FAIL ") + goal)


if __name__ == "__main__":
    main()
