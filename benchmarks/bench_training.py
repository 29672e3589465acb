"""Training throughput of recipes side by side in one run: texts and prompt answers learned per second.

A one-slot recipe's example is one (instruction, text) pair; a slot recipe's is one text with K prompts, each
answered (supervised) in the same pass. Each recipe runs ``--steps`` optimizer steps from its starting model on
its own first batches (after one warm-up step), in this process, one after the other. Usage:

  python benchmarks/bench_training.py --config one-slot=training/configs/hugie-small-stage10.yaml \\
      --config slots=training/configs/hugie-small-v2.yaml [--steps 20] [--precision fp32]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from hugie.training.trainer import TrainConfig, Trainer, collate, collate_slots


def measure(path: str, steps: int, precision: str | None) -> dict:
    overrides = {"output_dir": tempfile.mkdtemp(prefix="hugie-bench-"), "init_from": "hugie-small"}
    if precision:
        overrides["precision"] = precision
    trainer = Trainer(TrainConfig.from_file(path, **overrides))
    items, batches = trainer.epoch_data(0)
    model, cfg = trainer.model.train(), trainer.cfg
    texts = answers = tokens = 0
    elapsed = 0.0
    for index, ids in enumerate(batches[: steps + 1]):
        picked = [items[i] for i in ids]
        start = time.perf_counter()
        batch = collate_slots(picked, trainer.tokenizer) if trainer.prompts else collate(picked, trainer.tokenizer)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = model(**batch)["loss"]
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if index == 0:
            continue  # warm-up
        elapsed += time.perf_counter() - start
        texts += len(picked)
        answers += sum(len(it.markers) for it in picked) if trainer.prompts else len(picked)
        tokens += int(batch["attention_mask"].sum())
    return {"steps": steps, "texts_per_s": texts / elapsed, "answers_per_s": answers / elapsed,
            "tokens_per_s": tokens / elapsed, "precision": cfg.precision, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", action="append", required=True, help="NAME=CONFIG.yaml (repeatable)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", default=None, help="fp32 or bf16 for every recipe (default: each config's)")
    args = ap.parse_args()
    results = {name: measure(path, args.steps, args.precision)
               for name, path in (c.split("=", 1) for c in args.config)}
    print("| recipe | precision | texts / s | prompt answers / s | tokens / s |")
    print("|---|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['precision']} | {r['texts_per_s']:.1f} | {r['answers_per_s']:.1f} | "
              f"{r['tokens_per_s']:.0f} |")


if __name__ == "__main__":
    main()
