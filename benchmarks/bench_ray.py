"""Throughput of ``hugie batch``: in-process vs the Ray engine (local Ray, N actors), same file.

Both runs read the same JSONL, write the same records (checked: identical output files) and are
timed end to end (reading, extraction, writing). The Ray time excludes ``ray.init`` (reported on
its own) but includes starting the actors and loading one model per actor, which is what a user
pays per run; ``--docs`` large enough amortises it.

The model: ``--model DIR`` (a trained or exported hugie model), else a random BERT built here with
``--layers/--hidden`` on the test tokenizer (the numbers then measure compute, not quality).

    PYTHONPATH=. python benchmarks/bench_ray.py [--docs 2000] [--workers 2] [--batch-size 32]
        [--model DIR] [--layers 4 --hidden 256] [--threads 2] [--json out.json]

In-process uses ``--threads`` torch threads (default: all cores); each Ray actor gets
``cores / workers`` CPUs and as many threads, so both use the whole machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INSTRUCTION = "找到文章中所有【人名】类型的实体？"


def build_model(directory: Path, layers: int, hidden: int) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from hugie.modeling import GlobalPointerModel
    from hugie.tokenization import HugieTokenizer, build_unigram_tokenizer
    from tests.conftest import tiny_pieces

    tok = HugieTokenizer(build_unigram_tokenizer(tiny_pieces(), unk_id=3), max_length=256)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=max(1, hidden // 64), intermediate_size=hidden * 4,
                     max_position_embeddings=256, pad_token_id=tok.pad_id)
    model = GlobalPointerModel.from_encoder(BertModel(cfg, add_pooling_layer=False), head_size=64,
                                            max_span_width=16, max_seq_length=256)
    model.save_pretrained(directory)
    tok.save(directory)
    return directory


def write_docs(path: Path, n: int) -> Path:
    from tests.conftest import synthetic_records

    recs = synthetic_records(n, seed=1)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(len(recs)):  # a few sentences per document
            text = "".join(recs[(i + k) % n]["text"] for k in range(4))
            fh.write(json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="in-process torch threads (default: all cores)")
    ap.add_argument("--cores", type=int, default=os.cpu_count(), help="CPUs for the local Ray")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    import ray
    import torch

    from hugie.batch import LocalRunner, batch_task, run_batch
    from hugie.distributed import run_batch_ray
    from hugie.extractor import Extractor

    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    model = Path(args.model) if args.model else build_model(work / "model", args.layers, args.hidden)
    src = write_docs(work / "docs.jsonl", args.docs)

    threads = args.threads or args.cores
    torch.set_num_threads(threads)
    ex = Extractor.load(model, backend="torch", device="cpu")
    t = time.perf_counter()
    task = batch_task(instruction=INSTRUCTION)
    local = run_batch(str(src), work / "local.jsonl", LocalRunner(ex, task), batch_size=args.batch_size,
                      progress=False)
    local_s = time.perf_counter() - t

    t = time.perf_counter()
    ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    init_s = time.perf_counter() - t
    per_actor = max(1, args.cores // args.workers)
    t = time.perf_counter()
    remote = run_batch_ray(str(src), work / "ray.jsonl", task=task, model=str(model), backend="torch",
                           device="cpu", batch_size=args.batch_size, workers=args.workers, progress=False,
                           cpus_per_worker=per_actor)
    ray_s = time.perf_counter() - t
    ray.shutdown()

    same = (work / "local.jsonl").read_bytes() == (work / "ray.jsonl").read_bytes()
    result = {"docs": args.docs, "batch_size": args.batch_size, "model": str(model) if args.model else
              f"random BERT {args.layers}x{args.hidden}", "cores": args.cores,
              "in_process": {"threads": threads, "seconds": round(local_s, 2),
                             "docs_per_s": round(local.written / local_s, 1)},
              "ray": {"workers": args.workers, "cpus_per_worker": per_actor, "init_seconds": round(init_s, 2),
                      "seconds": round(ray_s, 2), "docs_per_s": round(remote.written / ray_s, 1)},
              "ray_vs_in_process": round(local_s / ray_s, 2), "identical_output": same}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
