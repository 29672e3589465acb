"""Scale-out: the Ray engine of ``hugie batch`` and ``hugie train`` under torchrun (CPU, gloo)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hugie.batch import LocalRunner, batch_task, count_records, errors_path_for, read_inputs, run_batch
from hugie.cli import app
from hugie.distributed import _read_split, parts_dir_for, plan_partitions
from hugie.errors import HugieError
from tests.conftest import synthetic_records

PER = "找到文章中所有【人名】类型的实体？"
cli = CliRunner()


def lines_of(path) -> list[str]:
    return Path(path).read_text(encoding="utf-8").splitlines(keepends=True)


# ---------------------------------------------------------------------- partitions (no Ray needed)
def _write_inputs(tmp_path: Path) -> dict[str, Path]:
    recs = synthetic_records(45, seed=11)
    jl = []
    for i, r in enumerate(recs):
        jl.append(json.dumps({"id": r["id"], "text": r["text"]}, ensure_ascii=False) if i % 9 else
                  json.dumps({"text": r["text"]}, ensure_ascii=False))  # no id: the line number
        if i % 7 == 3:
            jl.append("not json")
        if i % 11 == 4:
            jl += ["", json.dumps({"id": recs[1]["id"], "text": "again"})]  # blank line, duplicate id
    paths = {"jsonl": tmp_path / "in.jsonl", "txt": tmp_path / "in.txt", "csv": tmp_path / "in.csv",
             "tsv": tmp_path / "in.tsv"}
    paths["jsonl"].write_text("\n".join(jl) + "\n", encoding="utf-8")
    paths["txt"].write_bytes(("\n".join(r["text"] for r in recs) + "\n\n").encode() + b"\xff bad\n" + "末行".encode())
    rows = ['id,text']
    for i, r in enumerate(recs):
        text = f'"{r["text"]}\n第二行, ""引号"""' if i % 5 == 0 else r["text"].replace(",", " ")
        rows.append(f"{'' if i % 8 == 0 else r['id']},{text}")
    paths["csv"].write_bytes(("\r\n".join(rows[:20]) + "\r" + "\n".join(rows[20:]) + "\nshort\n").encode())
    paths["tsv"].write_text("id\ttext\n" + "\n".join(f"t{i}\t{r['text']}" for i, r in enumerate(recs)) + "\n",
                            encoding="utf-8")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"id": [r["id"] if i % 6 else None for i, r in enumerate(recs)],
                          "text": [r["text"] if i % 10 != 7 else None for i, r in enumerate(recs)]})
        paths["parquet"] = tmp_path / "in.parquet"
        pq.write_table(table, paths["parquet"], row_group_size=7)
    except ImportError:
        pass
    return paths


def _item(x) -> tuple:
    return (x.line, x.id, getattr(x, "text", None), getattr(x, "code", None), getattr(x, "reason", None))


def test_partitions_reread_exactly_the_records_of_a_full_read(tmp_path):
    """Every format: cutting the input into partitions and splits, then re-reading each split
    (as a Ray read task does), gives the full read's records and bad records."""
    for fmt, path in _write_inputs(tmp_path).items():
        full = [_item(x) for x in read_inputs(str(path))]
        for size, split in ((1, 1), (4, 4), (16, 4), (16, 16)):
            plan = plan_partitions(str(path), fmt, "text", "id", size, split_docs=split)
            assert plan.read == len(full), fmt
            assert all(p.docs == size and len(p.cuts) == size // split - 1 for p in plan.partitions[:-1]), fmt
            got = []
            for p in plan.partitions:
                n = 0
                for i, (start, end, first_line) in enumerate(p.splits()):
                    items = list(read_inputs(str(path), fmt, start=start, end=end, first_line=first_line,
                                             columns=plan.columns if start else None))
                    got += [_item(x) for x in items]
                    spec = {"index": p.index, "split": i, "input": str(path), "name": str(path), "format": fmt,
                            "text_field": "text", "id_field": "id", "start": start, "end": end,
                            "first_line": first_line, "columns": plan.columns, "batch_size": 1000, "skip": [],
                            "dups": {}}
                    rows = _read_split({"spec": json.dumps(spec)})  # what a Ray read task emits
                    docs = [d for r in rows if r["kind"] == "chunk" for d in json.loads(r["payload"])]
                    assert rows[-1]["kind"] == "meta" and len(json.loads(rows[-1]["payload"])) == len(items) - len(docs)
                    n += len(items)
                assert n == p.items, (fmt, size, p)
            assert got == full, (fmt, size)
        if fmt == "jsonl":
            dups = [line for p in plan.partitions for line in p.dups]
            assert dups and all(full_line[0] in dups for full_line in full if full_line[2] == "again")
            url = path.resolve().as_uri()  # any fsspec URL reads the same (file:// here)
            assert [_item(x) for x in read_inputs(url)] == [_item(x) for x in read_inputs(str(path), name=url)]
        if fmt == "parquet":
            assert count_records(str(path)) == 45


# ---------------------------------------------------------------------- Ray engine
def test_without_ray_the_engine_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    src = tmp_path / "in.txt"
    src.write_text("张三\n", encoding="utf-8")
    res = cli.invoke(app, ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), "-i", PER, "--engine", "ray"])
    assert res.exit_code == 2
    assert 'pip install "hugie[ray]"' in res.output and "E040" in res.output
    res = cli.invoke(app, ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), "-i", PER, "--address", "auto"])
    assert res.exit_code != 0 and "--engine ray" in res.output


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    from tests.conftest import tiny_model

    directory = tmp_path_factory.mktemp("tiny_random")
    tiny_model(tiny_tokenizer).save_pretrained(directory)
    tiny_tokenizer.save(directory)
    return directory


def _actors_in_process(model_dir, task=None, fail_after=None):
    """Stands in for the cluster: the actor's own code, run here (``fail_after`` partitions, then a crash)."""
    def run(ray, partitions, specs, collector, *args, **kwargs):
        import numpy as np

        import hugie.distributed as hd

        actor = hd.ExtractActor(str(model_dir), "torch", "cpu", task or batch_task(instruction=PER, threshold=0.3,
                                                                                    top_k=3))
        for n, p in enumerate(partitions):
            if n == fail_after:
                raise RuntimeError("driver killed")
            done = actor({"spec": np.array(specs(p), dtype=object)})
            for row in zip(done["part"], done["split"], done["kind"], done["chunk"], done["payload"]):
                collector.add(*row)
    return run


def test_engine_pipeline_in_schema_mode_on_csv_matches_in_process(tmp_path, model_dir, monkeypatch):
    """Plan → splits → actor → commit → merge, without a cluster: the in-process records, byte for byte."""
    pytest.importorskip("ray")
    import hugie.distributed as hd
    from hugie.extractor import Extractor
    from hugie.types import Schema

    schema = Schema.model_validate({"entities": ["地名"], "relations": [{"subject": "人名", "predicate": "出生地",
                                                                          "object": "地名"}]})
    src = _write_inputs(tmp_path)["csv"]
    ref = tmp_path / "ref.jsonl"
    ex = Extractor.load(model_dir, backend="torch", device="cpu")
    run_batch(str(src), ref, LocalRunner(ex, batch_task(schema=schema, threshold=0.3, top_k=1)), batch_size=4,
              progress=False)
    monkeypatch.setattr(hd, "_init_ray", lambda *a: False)
    task = batch_task(schema=schema, threshold=0.3, top_k=1)
    monkeypatch.setattr(hd, "_extract_on_ray", _actors_in_process(model_dir, task))
    out = tmp_path / "out.jsonl"
    stats = hd.run_batch_ray(str(src), out, task=task, model=str(model_dir), backend="torch", device="cpu",
                             batch_size=4, partition_docs=12, split_docs=4, progress=False)
    assert lines_of(out) == lines_of(ref) and stats.written == len(lines_of(ref)) > 30
    assert sorted(lines_of(errors_path_for(out))) == sorted(lines_of(errors_path_for(ref)))
    assert any(json.loads(line)["relations"] for line in lines_of(out))


# ---------------------------------------------------------------------- torchrun / DDP
def _train_config(tmp_path: Path, tiny_tokenizer, out: Path, max_steps: int) -> Path:
    from tests.conftest import tiny_model

    base = tmp_path / "base"
    if not base.exists():
        encoder = tiny_model(tiny_tokenizer).encoder
        # no dropout: the two runs then compute the same function, and the losses can be compared
        encoder.config.hidden_dropout_prob = encoder.config.attention_probs_dropout_prob = 0.0
        encoder.save_pretrained(base)
        tiny_tokenizer.save(base)
        data = tmp_path / "train.jsonl"
        data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(40)),
                        encoding="utf-8")
    cfg = {"base": str(base), "prune": None, "max_length": 64, "max_span_width": 16, "head_size": 16,
           "batch_size": 7, "batch_tokens": 4096, "warmup_steps": 1, "save_every": 2, "eval_every": 1000,
           "lr": 1e-3, "output_dir": str(out), "max_steps": max_steps,
           "datasets": [{"name": "syn", "path": str(tmp_path / "train.jsonl"), "language": "zh"}]}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def _torchrun(args: list[str], cwd: Path, nproc: int = 2) -> None:
    env = dict(os.environ, HUGIE_LOG_EVERY="1", OMP_NUM_THREADS="1", HUGIE_DIST_BACKEND="gloo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, lines_of(out / "train_log.jsonl")) if "loss" in r]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_follow_the_single_process_losses_and_resume(
        tmp_path, tiny_tokenizer, monkeypatch):
    import torch
    from hugie.training.trainer import TrainConfig, Trainer

    monkeypatch.setenv("HUGIE_LOG_EVERY", "1")
    one = tmp_path / "one"
    single = Trainer(TrainConfig.from_file(_train_config(tmp_path, tiny_tokenizer, one, 6)))
    single.train()
    reference = _losses(one)
    assert [s for s, _ in reference] == [1, 2, 3, 4, 5, 6]

    two = tmp_path / "two"
    cfg = _train_config(tmp_path, tiny_tokenizer, two, 6)
    driver = tmp_path / "killed_then_resumed.py"
    driver.write_text(
        "import sys\n"
        "from hugie.cli import app\n"
        "from hugie.training.trainer import TrainConfig, Trainer\n"
        "Trainer(TrainConfig.from_file(sys.argv[1])).train(stop_at=3)  # what a killed job leaves behind\n"
        "app(['train', sys.argv[1]], standalone_mode=False)  # `hugie train`: a new Trainer resumes it\n")
    _torchrun([str(driver), str(cfg)], tmp_path)  # one launch keeps CI fast; both legs run in every rank
    state = torch.load(two / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 6 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert set(state["model"]) == set(single.model.state_dict())  # the unwrapped model, no "module." prefix

    got = _losses(two)
    assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes the log
    for (_, a), (_, b) in zip(reference, got):
        assert b == pytest.approx(a, rel=2e-3, abs=2e-3), (reference, got)
    from hugie.modeling import GlobalPointerModel

    ddp = GlobalPointerModel.from_pretrained(two / "model").state_dict()
    for k, v in single.model.state_dict().items():
        assert torch.allclose(v, ddp[k], atol=2e-4, rtol=1e-3), k

    # a single process resumes the torchrun checkpoint (same format)
    cont = Trainer(TrainConfig.from_file(_train_config(tmp_path, tiny_tokenizer, two, 7)))
    cont.train()
    assert cont.step == 7 and _losses(two)[-1][0] == 7


# ---------------------------------------------------------------------- Ray cluster (last: one local Ray per module)
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_two_workers_write_the_in_process_records_exactly_once_across_crashes(
        tmp_path, ray_local, model_dir, monkeypatch):
    import hugie.distributed as hd
    from hugie.extractor import Extractor

    src = _write_inputs(tmp_path)["jsonl"]
    task = batch_task(instruction=PER, threshold=0.3, top_k=3)  # a random tiny model: low threshold, so there
    ref = tmp_path / "ref.jsonl"                                   # are spans to compare
    run_batch(str(src), ref, LocalRunner(Extractor.load(model_dir, backend="torch", device="cpu"), task),
              batch_size=4, progress=False)
    expected = lines_of(ref)
    expected_errors = sorted(lines_of(errors_path_for(ref)))
    assert len(expected) > 30 and len(expected_errors) >= 8
    monkeypatch.setenv("HUGIE_RAY_PARTITION_DOCS", "12")  # 3 chunks of 4 per partition,
    monkeypatch.setenv("HUGIE_RAY_SPLIT_DOCS", "4")  # each chunk its own split (read task)
    out = tmp_path / "out.jsonl"
    kw = dict(task=task, model=str(model_dir), backend="torch", device="cpu", batch_size=4, workers=2,
              progress=False)

    # 1. an earlier run died after committing two partitions; here the actor's code runs in-process
    #    (one cluster run per test keeps CI fast; a real mid-run kill goes the same way)
    monkeypatch.setattr(hd, "_extract_on_ray", _actors_in_process(model_dir, fail_after=2))
    with pytest.raises(RuntimeError, match="driver killed"):
        hd.run_batch_ray(str(src), out, **kw)
    monkeypatch.undo()
    monkeypatch.setenv("HUGIE_RAY_PARTITION_DOCS", "12")
    monkeypatch.setenv("HUGIE_RAY_SPLIT_DOCS", "4")
    parts = parts_dir_for(out)
    assert sorted(p.name for p in parts.glob("part-*[0-9].jsonl")) == ["part-000000.jsonl", "part-000001.jsonl"]
    assert not out.exists()
    with pytest.raises(HugieError, match="unfinished run"):
        hd.run_batch_ray(str(src), out, **kw)

    # 2. `hugie batch --engine ray --resume` runs the rest; then it dies while merging the parts
    real_merge = hd._merge

    def merge_then_crash(plan, parts_dir, output, *args):
        real_merge(plan, parts_dir, output, *args)
        done = lines_of(output)
        output.write_text("".join(done[:10]) + done[10][:25], encoding="utf-8")  # 10 records and a torn line
        raise RuntimeError("killed while merging")

    real_commit, committed = hd.commit_part, []

    def spy_commit(parts_dir, index, *args):
        committed.append(index)
        real_commit(parts_dir, index, *args)

    monkeypatch.setattr(hd, "_merge", merge_then_crash)
    monkeypatch.setattr(hd, "commit_part", spy_commit)
    args = ["batch", str(src), "-o", str(out), "-i", PER, "--model", str(model_dir), "--backend", "torch",
            "--device", "cpu", "--threshold", "0.3", "--top-k", "3", "--batch-size", "4", "--workers", "2",
            "--engine", "ray", "--resume", "--no-progress"]
    res = cli.invoke(app, args)
    assert isinstance(res.exception, RuntimeError) and "merging" in str(res.exception), res.output
    n_parts = len(json.loads((parts / "manifest.json").read_text())["partitions"])
    assert n_parts >= 4 and sorted(committed) == list(range(2, n_parts))  # only the missing ones ran
    monkeypatch.setattr(hd, "_merge", real_merge)
    monkeypatch.setattr(hd, "commit_part", real_commit)

    # 3. resume again: every partition is committed (no cluster work); ids already in OUTPUT are skipped
    stats = hd.run_batch_ray(str(src), out, resume=True, **kw)
    assert (stats.skipped, stats.written, stats.errors) == (10, len(expected) - 10, 0)
    assert lines_of(out) == expected  # byte for byte, in input order, each record once
    assert sorted(lines_of(errors_path_for(out))) == expected_errors
    assert not parts.exists()

    # 4. resuming a finished run does nothing
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "wrote 0 records" in res.output and lines_of(out) == expected
