"""Schemas batched across documents: documents/s through ``hugie batch`` and the service, two checkouts in one run.

64 documents (CLUENER dev, or built-in sentences without ``--data``) × a 10-type entity schema, run by
``hugie batch -s`` (local, one process) and by ``hugie serve`` with 8 concurrent clients each sending one
``POST /extract`` schema request per document. Each measurement runs against every checkout given with
``--checkout NAME=PATH`` (a git worktree of another commit, say), in the same run and on the same model,
so the ratio between them is what the change bought on this machine.

  git worktree add /tmp/hugie-before <commit>
  python benchmarks/bench_schema_batching.py --checkout before=/tmp/hugie-before --checkout after=. \\
      --data ../shared/data/cluener/dev.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from hugie.client import Client

TYPES = ["地址", "书名", "公司", "游戏", "政府", "电影", "人名", "组织机构", "职位", "景点"]
SENTENCES = ["浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。", "张三去了北京，在故宫见到了李四。",
             "《三体》的作者刘慈欣出席了在上海举行的发布会。", "腾讯公司发布了新游戏《王者荣耀》的更新。"]


def documents(path: str | None, n: int) -> list[str]:
    if path is None:
        return [SENTENCES[i % len(SENTENCES)] + f"第{i}条。" for i in range(n)]
    texts = [json.loads(line)["text"] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SHIM = """import importlib.util, sys
ROOT = {root!r}
FOLDERS = {{"hugie": "hugie", "hugie.api": "api", "hugie.training": "training"}}


class CheckoutFinder:
    \"\"\"Import hugie, hugie.api and hugie.training from ROOT, whatever checkout is installed.\"\"\"

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name not in FOLDERS:
            return None
        folder = ROOT + "/" + FOLDERS[name]
        return importlib.util.spec_from_file_location(name, folder + "/__init__.py",
                                                      submodule_search_locations=[folder])


sys.meta_path.insert(0, CheckoutFinder)
"""


def env_for(checkout: Path) -> dict:
    """The environment that runs ``checkout``'s code (a sitecustomize maps its packages, api/ and training/
    included, ahead of the installed hugie) on its own embedded model."""
    shim = Path(tempfile.gettempdir()) / f"hugie-shim-{abs(hash(str(checkout)))}"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SHIM.format(root=str(checkout)), encoding="utf-8")
    return {**os.environ, "PYTHONPATH": str(shim), "HUGIE_MODEL": str(checkout / "hugie/models/hugie-small")}


def time_batch(checkout: Path, work: Path, docs: list[str]) -> float:
    """docs/s of ``hugie batch -s`` over the documents (model load excluded: the CLI reports its own rate)."""
    src = work / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs)),
                   encoding="utf-8")
    schema = work / "schema.json"
    schema.write_text(json.dumps({"entities": TYPES}, ensure_ascii=False), encoding="utf-8")
    out = work / f"out-{checkout.name}.jsonl"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "hugie.cli", "batch", str(src), "-o", str(out), "-s", str(schema),
                           "--overwrite", "--no-progress", "--batch-size", "32"], env=env_for(checkout),
                          capture_output=True, text=True, timeout=1800, cwd=checkout)
    if done.returncode:
        raise SystemExit(f"hugie batch failed in {checkout}:\n{done.stderr}")
    rate = float(done.stderr.split("(")[1].split(" docs/s")[0])
    print(f"  hugie batch ({checkout}): {rate:.2f} docs/s ({time.perf_counter() - start:.1f} s with model load)")
    return rate


async def _clients(url: str, docs: list[str], concurrency: int) -> float:
    queue = list(enumerate(docs))
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        async def worker():
            while queue:
                _, text = queue.pop()
                r = await http.post("/extract", json={"text": text, "schema": {"entities": TYPES}})
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(docs) / (time.perf_counter() - start)


def time_service(checkout: Path, docs: list[str], concurrency: int) -> float:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "hugie.cli", "serve", "--port", str(port)], env=env_for(checkout),
                            cwd=checkout, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(url) as client:
            client.wait_until_ready(180, process=proc)
        asyncio.run(_clients(url, docs[:8], concurrency))  # warm-up
        rate = asyncio.run(_clients(url, docs, concurrency))
        print(f"  service ({checkout}), {concurrency} clients: {rate:.2f} docs/s")
        return rate
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", required=True, help="NAME=PATH of a hugie checkout.")
    parser.add_argument("--data", help="JSONL with a text field (default: built-in sentences).")
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    docs = documents(args.data, args.docs)
    checkouts = {name: Path(path).resolve() for name, path in (c.split("=", 1) for c in args.checkout)}
    print(f"{len(docs)} documents x {len(TYPES)} entity types; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    rates: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in checkouts.items():
            rates[name] = {"batch": time_batch(path, Path(tmp), docs),
                           "service": time_service(path, docs, args.concurrency)}
    first = next(iter(checkouts))
    print("\n| checkout | hugie batch docs/s | service docs/s | batch ratio | service ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rates.items():
        print(f"| {name} | {r['batch']:.2f} | {r['service']:.2f} | {r['batch'] / rates[first]['batch']:.2f}x | "
              f"{r['service'] / rates[first]['service']:.2f}x |")


if __name__ == "__main__":
    main()
