"""Scale out on engines people already run: Ray Data for ``hugie batch``, torchrun for ``hugie train``.

Ray engine (``hugie batch --engine ray``, :func:`run_batch_ray`)
----------------------------------------------------------------
1. *Plan.* The driver reads the input once with the in-process reader (:func:`hugie.batch.read_inputs`,
   local path or fsspec URL) and cuts it into deterministic partitions of ``partition_docs``
   documents (a multiple of ``batch_size``), keeping where each starts (byte; row for Parquet), its
   first line number and how many records it holds. Duplicate ids and what an earlier run already
   wrote are found here, as the in-process run finds them.
2. *Extract.* A Ray Data dataset of read specs, one per split of ``split_docs`` documents (the
   unit of parallelism), goes through ``map_batches`` with an actor pool: one Extractor per actor,
   CPU or GPU actors. Each actor reads its split from the input (same reader, same line numbers and
   ids), cuts it into chunks of ``batch_size`` documents and extracts them. The chunks are the ones
   the in-process run builds, so a fresh run writes exactly the records ``run_batch`` writes.
3. *Commit.* The driver gathers each partition's results and commits it as
   ``OUTPUT.parts/part-K.jsonl`` (+ ``part-K.errors.jsonl``; written, then renamed) once complete.
   At the end the parts are appended to OUTPUT (and the errors file) in input order and the parts
   directory is removed.

``resume=True`` skips committed partitions and ids already in OUTPUT (a crash during the final merge
included), so every input record ends up exactly once in OUTPUT or the errors file.

torchrun (``torchrun --nproc_per_node N -m hugie.cli train CONFIG``)
--------------------------------------------------------------------
:func:`init_distributed` reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and starts the process group
(gloo on CPU, nccl on CUDA); the trainer (``hugie.training.trainer``) takes its slice of every
global batch, wraps the model in DistributedDataParallel and writes from rank 0 only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .batch import (
    BadRecord,
    BatchStats,
    Cursor,
    LocalRunner,
    Record,
    _error_reason,
    _id_key,
    _process,
    _progress,
    _read_done,
    check_input,
    check_output,
    duplicate_error,
    errors_path_for,
    input_label,
    is_url,
    locks_output,
    read_inputs,
)
from .errors import HugieError

log = logging.getLogger("hugie.distributed")

# ====================================================================== torchrun / DDP


@dataclass
class DistEnv:
    """This process's place in a torchrun job (world_size 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the torchrun job described by the environment, if any.

    ``WORLD_SIZE`` > 1 starts the default process group: nccl with one CUDA device per local rank
    when CUDA is available, else gloo (``HUGIE_DIST_BACKEND`` forces one). Collective timeout:
    ``HUGIE_DIST_TIMEOUT_MIN`` minutes (default 60; rank 0 evaluates while the others wait).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistEnv()
    import torch
    import torch.distributed as dist

    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise HugieError("E042", reason=f"WORLD_SIZE={world} but RANK/LOCAL_RANK are not set; "
                                        f"launch with torchrun ({exc})") from exc
    forced = os.environ.get("HUGIE_DIST_BACKEND", "").strip().lower() or None
    if forced not in (None, "gloo", "nccl"):
        raise HugieError("E042", reason=f"HUGIE_DIST_BACKEND must be gloo or nccl, got {forced!r}")
    use_cuda = torch.cuda.is_available() and forced != "gloo"
    if forced == "nccl" and not use_cuda:
        raise HugieError("E042", reason="nccl needs CUDA, and torch sees no CUDA device")
    backend = forced or ("nccl" if use_cuda else "gloo")
    device = "cpu"
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise HugieError("E042", reason=f"local rank {local} but only {torch.cuda.device_count()} CUDA "
                                            "device(s): use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        minutes = float(os.environ.get("HUGIE_DIST_TIMEOUT_MIN", "60"))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    return DistEnv(rank=rank, world_size=world, local_rank=local, backend=backend, device=device)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        if env.device.startswith("cuda"):
            dist.barrier(device_ids=[env.local_rank])
        else:
            dist.barrier()


def all_reduce_sum(env: DistEnv, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (the values themselves when not distributed)."""
    if not env.enabled:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def any_rank(env: DistEnv, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: ranks stop together."""
    if not env.enabled:
        return bool(flag)
    return all_reduce_sum(env, [1.0 if flag else 0.0])[0] > 0


def gather_to_main(env: DistEnv, obj: Any) -> list | None:
    """Every rank's ``obj`` on rank 0 (None on the others); ``[obj]`` when not distributed."""
    if not env.enabled:
        return [obj]
    import torch.distributed as dist

    out = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def shard(batch: list[int], env: DistEnv) -> list[int]:
    """This rank's items of a global batch: ``batch[rank::world]`` (disjoint, covering)."""
    return batch[env.rank::env.world_size] if env.enabled else batch


def shutdown_distributed(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ====================================================================== Ray engine


MAX_BLOCKS = 4096  # Ray Data blocks of read specs: beyond this, a block holds several splits


def require_ray():
    """The ``ray`` module with Ray Data, or a HugieError saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise HugieError("E040", reason=str(exc)) from exc
    return ray


def parts_dir_for(output: str | Path) -> Path:
    """``out.jsonl`` → ``out.jsonl.parts/``: where a Ray run commits its partitions."""
    output = Path(output)
    return output.with_name(output.name + ".parts")


@dataclass
class Partition:
    """A deterministic slice of the input: where it starts and ends, what it holds."""

    index: int
    start: int  # byte offset (row for Parquet)
    end: int | None  # None: to the end of the input
    first_line: int
    items: int  # records and bad records
    docs: int  # records with a new id (the ones a fresh run extracts)
    cuts: list[tuple[int, int]] = field(default_factory=list)  # (position, first line) where inner splits start
    # per run, not part of the manifest
    todo: int = 0  # docs to extract in this run
    dups: dict[int, str] = field(default_factory=dict)  # line → duplicate-id reason
    skip: list[int] = field(default_factory=list)  # lines an earlier run already wrote

    def key(self) -> list:
        return [self.start, self.end, self.first_line, self.items, self.docs]

    def splits(self) -> list[tuple[int, int | None, int]]:
        """The read units: (start, end, first line), in order."""
        starts = [(self.start, self.first_line), *self.cuts]
        ends = [pos for pos, _ in self.cuts] + [self.end]
        return [(start, end, line) for (start, line), end in zip(starts, ends)]


@dataclass
class Plan:
    partitions: list[Partition]
    columns: list[str] | None
    read: int
    skipped: int

    @property
    def todo(self) -> int:
        return sum(p.todo for p in self.partitions)


def plan_partitions(input: str, fmt: str, text_field: str, id_field: str, partition_docs: int,
                    done: set[str] = frozenset(), done_lines: set[int] = frozenset(),
                    name: str | None = None, split_docs: int | None = None) -> Plan:
    """One pass over the input (no model): partitions of ``partition_docs`` new-id documents each,
    read in splits of ``split_docs`` (default: whole partitions). ``name``: how messages spell the
    input (default: ``input``)."""
    name = name or input
    split_docs = split_docs or partition_docs
    cursor = Cursor()
    parts: list[Partition] = []
    seen: dict[str, int] = {}
    read = skipped = 0
    current = Partition(0, 0, None, 1, 0, 0)
    for item in read_inputs(input, fmt, text_field, id_field, cursor=cursor, name=name):
        read += 1
        current.items += 1
        if isinstance(item, BadRecord):
            if item.line in done_lines:
                current.skip.append(item.line)
            continue
        key = _id_key(item.id)
        if key in seen:
            if item.line in done_lines:
                current.skip.append(item.line)
            else:
                current.dups[item.line] = duplicate_error(item, name, seen[key]).reason
            continue
        seen[key] = item.line
        current.docs += 1
        if key in done:
            current.skip.append(item.line)
            skipped += 1
        else:
            current.todo += 1
        if current.docs == partition_docs:
            current.end = cursor.pos
            parts.append(current)
            current = Partition(len(parts), cursor.pos, None, cursor.line + 1, 0, 0)
        elif current.docs % split_docs == 0:
            current.cuts.append((cursor.pos, cursor.line + 1))
    if current.items:
        parts.append(current)
    return Plan(parts, cursor.columns, read, skipped)


def _error_line(line: int, rid: Any, code: str, reason: str) -> dict:
    return {"line": line, "id": rid, "code": code, "error": reason}


def _read_split(row: dict) -> list[dict]:
    """One split of a partition → rows of chunks (``batch_size`` documents) and one meta row (how
    many chunks, the bad records)."""
    spec = json.loads(row["spec"])
    skip = set(spec["skip"])
    dups = {int(k): v for k, v in spec["dups"].items()}
    errors, chunks, current = [], [], []
    items = read_inputs(spec["input"], spec["format"], spec["text_field"], spec["id_field"], start=spec["start"],
                        end=spec["end"], first_line=spec["first_line"],
                        columns=spec["columns"] if spec["start"] else None, name=spec["name"])
    for item in items:
        if item.line in skip:
            continue
        if isinstance(item, BadRecord):
            errors.append(_error_line(item.line, item.id, item.code, item.reason))
        elif item.line in dups:
            errors.append(_error_line(item.line, item.id, "E023", dups[item.line]))
        else:
            current.append([item.line, item.id, item.text])
            if len(current) >= spec["batch_size"]:
                chunks.append(current)
                current = []
    if current:
        chunks.append(current)
    part, split = spec["index"], spec["split"]
    rows = [{"part": part, "split": split, "kind": "chunk", "chunk": j,
             "payload": json.dumps(c, ensure_ascii=False)} for j, c in enumerate(chunks)]
    rows.append({"part": part, "split": split, "kind": "meta", "chunk": len(chunks),
                 "payload": json.dumps(errors, ensure_ascii=False)})
    return rows


def _run_chunk(runner, payload: str) -> str:
    """Extract one chunk as the in-process batch does; output lines and errors as JSON."""
    chunk = [Record(line, rid, text) for line, rid, text in json.loads(payload)]
    records, errors = [], []
    for record, result in zip(chunk, _process(runner, chunk), strict=True):
        if isinstance(result, BaseException):
            errors.append(_error_line(record.line, record.id, *_error_reason(result)))
        else:
            records.append(json.dumps({"id": record.id, **result}, ensure_ascii=False))
    return json.dumps({"records": records, "errors": errors, "n": len(chunk)}, ensure_ascii=False)


class ExtractActor:
    """One Extractor per Ray actor; ``map_batches`` hands it read specs, it returns result rows."""

    def __init__(self, model: str | None, backend: str, device: str, task: dict, threads: int | None = None):
        from .extractor import Extractor

        if threads:
            os.environ.setdefault("HUGIE_THREADS", str(threads))  # the ONNX backend's intra-op threads
        extractor = Extractor.load(model, backend=backend, device=device)
        if threads and extractor.backend.name == "torch":
            import torch

            torch.set_num_threads(threads)
        self.runner = LocalRunner(extractor, task)

    def __call__(self, batch: dict) -> dict:
        """Read each split, extract its chunks: rows (part, split, kind, chunk, payload)."""
        import numpy as np

        rows = [r for spec in batch["spec"] for r in _read_split({"spec": spec})]
        for r in rows:
            if r["kind"] == "chunk":
                r["payload"] = _run_chunk(self.runner, r["payload"])
        return {"part": np.array([r["part"] for r in rows], dtype=np.int64),
                "split": np.array([r["split"] for r in rows], dtype=np.int64),
                "kind": np.array([r["kind"] for r in rows], dtype=object),
                "chunk": np.array([r["chunk"] for r in rows], dtype=np.int64),
                "payload": np.array([r["payload"] for r in rows], dtype=object)}


class _Collector:
    """Gathers each partition's rows; commits the partition when all its chunks are in."""

    def __init__(self, parts_dir: Path, n_splits: dict[int, int]):
        self.parts_dir = parts_dir
        self.n_splits = n_splits  # partition → how many splits it is read in
        self.state: dict[int, dict] = {}
        self.committed: set[int] = set()

    def add(self, part: int, split: int, kind: str, chunk: int, payload: str) -> int:
        """Returns how many documents this row completed. Idempotent: a row seen twice (a retried
        task) changes nothing."""
        if part in self.committed:
            return 0
        st = self.state.setdefault(part, {"chunks": {}, "meta": {}})
        done = 0
        if kind == "meta":
            st["meta"][split] = (chunk, json.loads(payload))
        elif (split, chunk) not in st["chunks"]:
            result = json.loads(payload)
            st["chunks"][split, chunk] = result
            done = result["n"]
        if len(st["meta"]) == self.n_splits[part] and len(st["chunks"]) == sum(n for n, _ in st["meta"].values()):
            keys = sorted(st["chunks"])
            records = [line for key in keys for line in st["chunks"][key]["records"]]
            errors = [e for _, errs in st["meta"].values() for e in errs]
            errors += [e for key in keys for e in st["chunks"][key]["errors"]]
            commit_part(self.parts_dir, part, records, errors)
            del self.state[part]
            self.committed.add(part)
        return done


def part_paths(parts_dir: Path, index: int) -> tuple[Path, Path]:
    return parts_dir / f"part-{index:06d}.jsonl", parts_dir / f"part-{index:06d}.errors.jsonl"


def commit_part(parts_dir: Path, index: int, records: list[str], errors: list[dict]) -> None:
    """Write a partition's records and errors, then rename: the records file appears last, whole."""
    out, errs = part_paths(parts_dir, index)
    errors = sorted(errors, key=lambda e: e["line"])
    for path, lines in ((errs, [json.dumps(e, ensure_ascii=False) for e in errors]), (out, records)):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


def _init_ray(ray, address: str | None, num_cpus: int | None, verbose: bool) -> bool:
    """Connect to ``address`` (a cluster; ``auto``: the local one) or start a local Ray; False if already up."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.WARNING,
                              "log_to_driver": verbose}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
    return True


@locks_output
def run_batch_ray(input: str, output: str | Path, *, task: dict, model: str | None = None, backend: str = "auto",
                  device: str = "auto", fmt: str = "auto", text_field: str = "text", id_field: str = "id",
                  batch_size: int = 32, workers: int = 1, resume: bool = False, overwrite: bool = False,
                  errors_file: str | Path | None = None, progress: bool = True, address: str | None = None,
                  num_gpus: float | None = None, cpus_per_worker: float = 1, partition_docs: int | None = None,
                  split_docs: int | None = None, num_cpus: int | None = None) -> BatchStats:
    """``hugie batch --engine ray``: the in-process batch's records for ``task`` (a
    :func:`hugie.batch.batch_task`), from an actor pool of ``workers`` Extractors (see the module docstring).
    ``num_gpus`` per actor defaults to 1 for a CUDA device; ``num_cpus`` sizes a local Ray started here
    (default: all cores); ``address`` joins a cluster.
    Partitions hold ``partition_docs`` documents (``HUGIE_RAY_PARTITION_DOCS``; default 64 batches):
    the unit of resume; keep it the same between a run and its ``resume``. They are read in splits
    of ``split_docs`` (``HUGIE_RAY_SPLIT_DOCS``; default 4 batches): the unit of parallelism.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    ray = require_ray()
    if input == "-":
        raise HugieError("E041", reason="reads a file or an fsspec URL, not stdin (each worker reads its own part)")
    fmt = check_input(input, fmt)
    name = input  # for messages, as the in-process run spells it
    if not is_url(input):
        input = str(Path(input).resolve())  # the actors may not share our working directory
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    output = Path(output)
    errors_file = Path(errors_file) if errors_file else errors_path_for(output)
    parts_dir = parts_dir_for(output)
    check_output(output, resume, overwrite)
    if not resume:
        if parts_dir.exists() and any(parts_dir.glob("part-*.jsonl")) and not overwrite:
            raise HugieError("E041", reason=f"{parts_dir} holds an unfinished run; pass --resume to continue it "
                                            "or --overwrite to replace it")
        shutil.rmtree(parts_dir, ignore_errors=True)
    per_part = partition_docs or int(os.environ.get("HUGIE_RAY_PARTITION_DOCS", "0") or 0) or batch_size * 64
    per_part = max(batch_size, -(-per_part // batch_size) * batch_size)  # whole chunks: same chunks as in-process
    per_split = split_docs or int(os.environ.get("HUGIE_RAY_SPLIT_DOCS", "0") or 0) or batch_size * 4
    per_split = min(per_part, max(batch_size, -(-per_split // batch_size) * batch_size))

    start = time.perf_counter()
    done = {_id_key(v) for v in _read_done(output, "id")} if resume else set()
    done_lines = set(_read_done(errors_file, "line")) if resume else set()
    plan = plan_partitions(input, fmt, text_field, id_field, per_part, done, done_lines, name, per_split)
    manifest = {"version": 1, "input": input, "format": fmt, "text_field": text_field, "id_field": id_field,
                "batch_size": batch_size, "partition_docs": per_part, "columns": plan.columns,
                "partitions": [p.key() for p in plan.partitions]}
    parts_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = parts_dir / "manifest.json"
    if manifest_path.exists():
        if json.loads(manifest_path.read_text(encoding="utf-8")) != json.loads(json.dumps(manifest)):
            raise HugieError("E041", reason=f"{parts_dir} was written for another input or other settings "
                                            "(file, format, fields, batch size); pass --overwrite to start over")
    else:
        manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    todo = [p for p in plan.partitions if not part_paths(parts_dir, p.index)[0].exists()]
    log.info("%d partitions of %d docs, %d to run, %d docs to extract", len(plan.partitions), per_part, len(todo),
             sum(p.todo for p in todo))

    def specs(p: Partition) -> list[str]:
        """One read spec per split, with the duplicate and done lines that fall in it."""
        out = []
        splits = p.splits()
        for i, (begin, end, first_line) in enumerate(splits):
            last = splits[i + 1][2] if i + 1 < len(splits) else float("inf")
            out.append(json.dumps({
                "index": p.index, "split": i, "input": input, "name": name, "format": fmt,
                "text_field": text_field, "id_field": id_field, "start": begin, "end": end, "first_line": first_line,
                "columns": plan.columns, "batch_size": batch_size,
                "skip": [line for line in p.skip if first_line <= line < last],
                "dups": {str(k): v for k, v in p.dups.items() if first_line <= k < last}}, ensure_ascii=False))
        return out

    collector = _Collector(parts_dir, {p.index: len(p.cuts) + 1 for p in plan.partitions})
    for p in todo:  # nothing to extract: read its errors here, no cluster needed
        if not p.todo:
            for spec in specs(p):
                for row in _read_split({"spec": spec}):
                    collector.add(row["part"], row["split"], row["kind"], row["chunk"], row["payload"])
    remote = [p for p in todo if p.todo]
    stats = BatchStats(read=plan.read, skipped=plan.skipped, output=str(output), errors_file=str(errors_file))
    if remote:
        verbose = logging.getLogger("hugie").isEnabledFor(logging.INFO) or log.isEnabledFor(logging.INFO)
        started = _init_ray(ray, address, num_cpus, verbose)
        try:
            _extract_on_ray(ray, remote, specs, collector, progress, name, verbose,
                            dict(model=model, backend=backend, device=device, task=task),
                            batch_size=batch_size, workers=workers, cpus_per_worker=cpus_per_worker,
                            num_gpus=(1 if str(device).startswith("cuda") else 0) if num_gpus is None else num_gpus)
        finally:
            if started:
                ray.shutdown()
    if collector.state:  # pragma: no cover - Ray lost rows without raising
        raise HugieError("E041", reason=f"partitions {sorted(collector.state)} came back incomplete; "
                                        "rerun with --resume")
    _merge(plan, parts_dir, output, errors_file, resume, done, done_lines, stats)
    shutil.rmtree(parts_dir, ignore_errors=True)
    stats.seconds = time.perf_counter() - start
    return stats


def _extract_on_ray(ray, partitions: list[Partition], specs, collector: _Collector, progress: bool, input: str,
                    verbose: bool, actor_kwargs: dict, *, batch_size: int, workers: int, cpus_per_worker: float,
                    num_gpus: float) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    threads = max(1, int(cpus_per_worker)) if not num_gpus else None
    items = [{"spec": spec} for p in partitions for spec in specs(p)]
    # one block per split (up to a cap): blocks are what the actors share out
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS))
    ds = ds.map_batches(ExtractActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                        fn_constructor_kwargs=dict(actor_kwargs, threads=threads), num_cpus=cpus_per_worker,
                        num_gpus=num_gpus or None)
    bar = _progress(progress)
    rows = iter(ds.iter_rows())
    try:
        with bar:
            task = bar.add_task(f"{input_label(input)} (ray, {workers} workers)",
                                total=sum(p.todo for p in partitions))
            for row in rows:
                n = collector.add(int(row["part"]), int(row["split"]), str(row["kind"]), int(row["chunk"]),
                                  str(row["payload"]))
                if n:
                    bar.advance(task, n)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:  # stop the executor and its actors when we leave early
            close()


def _merge(plan: Plan, parts_dir: Path, output: Path, errors_file: Path, resume: bool, done: set[str],
           done_lines: set[int], stats: BatchStats) -> None:
    """Append the committed parts to OUTPUT and the errors file, in input order, each record once."""
    output.parent.mkdir(parents=True, exist_ok=True)
    mode = "a" if resume else "w"
    with open(output, mode, encoding="utf-8") as out, open(errors_file, mode, encoding="utf-8") as errs:
        for p in plan.partitions:
            records, errors = part_paths(parts_dir, p.index)
            with open(records, encoding="utf-8") as fh:
                lines = [line for line in fh if not done or _id_key(json.loads(line)["id"]) not in done]
            out.writelines(lines)
            stats.written += len(lines)
            with open(errors, encoding="utf-8") as fh:
                lines = [line for line in fh if not done_lines or json.loads(line)["line"] not in done_lines]
            errs.writelines(lines)
            stats.errors += len(lines)
        out.flush()
        errs.flush()
        os.fsync(out.fileno())
        os.fsync(errs.fileno())


__all__ = ["DistEnv", "init_distributed", "barrier", "all_reduce_sum", "any_rank", "gather_to_main", "shard",
           "shutdown_distributed", "require_ray", "run_batch_ray", "plan_partitions", "parts_dir_for",
           "ExtractActor", "Partition", "Plan"]
