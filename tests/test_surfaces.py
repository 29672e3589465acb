"""One contract on every surface: the same requests through the Extractor, HTTP, the SDK (sync and async),
``hugie extract``, ``hugie batch`` (local and ``--url``) and the Ray engine's actor give the same results."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hugie.api import Settings, create_app
from typer.testing import CliRunner

from hugie.batch import batch_task, run_batch
from hugie.cli import app as cli
from hugie.client import AsyncClient, Client
from hugie.extractor import Extractor
from tests.test_client import running_server

PER = "找到文章中所有【人名】类型的实体？"
TEXTS = ["张三去了北京。", "昨天李四在上海开会。", "王小明出生于杭州，后来搬家了。", "听说赵云住在成都附近"]
SCHEMA = {"entities": ["地名"], "relations": [{"subject": "人名", "predicate": "出生地", "object": "地名"}]}
TASKS = {
    "instruction": {"instruction": PER, "threshold": 0.3},
    "entities": {"entities": ["人名", "地名"], "threshold": 0.3, "top_k": 2},
    "schema": {"schema": SCHEMA, "threshold": 0.3, "relation_threshold": 0.2},
}
FLAGS = {"instruction": ["-i", PER], "entities": ["-e", "人名,地名", "--top-k", "2"],
         "schema": ["--relation-threshold", "0.2"]}


def same(a, b, path="result") -> None:
    """Equal JSON, scores within 1e-4 (batches of other sizes pad differently)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-4), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: {a} != {b}"
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def requests(mode: str) -> list[dict]:
    return [{**TASKS[mode], "text": t} for t in TEXTS]


@pytest.fixture(scope="module")
def extractor(trained_model_dir):
    return Extractor.load(trained_model_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def expected(extractor) -> dict[str, list[dict]]:
    out = {mode: [r.model_dump() for r in extractor.run(requests(mode))] for mode in TASKS}
    assert all(r["spans"] for r in out["instruction"]), "the tiny trained model finds every person"
    assert any(r["relations"] for r in out["schema"]), "and some relations"
    return out


@pytest.fixture(scope="module")
def server(extractor):
    settings = Settings(_env_prefix="HUGIE_TEST_ISOLATED_", warmup=False, max_wait_ms=20)
    with running_server(create_app(settings, extractor=extractor)) as (url, _):
        yield url


def test_one_mixed_run_equals_runs_per_mode_and_the_wrappers(extractor, expected):
    mixed = [r for mode in TASKS for r in requests(mode)]
    got = [r.model_dump() for r in extractor.run(mixed)]
    same(got, [r for mode in TASKS for r in expected[mode]])
    for text, want in zip(TEXTS, expected["instruction"]):
        same({"spans": [s.model_dump() for s in extractor.extract(PER, text, threshold=0.3)]}, want)
    for text, want in zip(TEXTS, expected["entities"]):
        found = extractor.extract_entities(text, ["人名", "地名"], threshold=0.3, top_k=2)
        same({"entities": {t: [s.model_dump() for s in v] for t, v in found.items()}}, want)
    for text, want in zip(TEXTS, expected["schema"]):
        same(extractor.extract_schema(text, SCHEMA, threshold=0.3, relation_threshold=0.2).model_dump(), want)


def test_http_single_and_batch(server, expected):
    for mode in TASKS:
        singles = [httpx.post(server + "/extract", json=r, timeout=30) for r in requests(mode)]
        assert all(r.status_code == 200 for r in singles), [r.text for r in singles]
        same([r.json() for r in singles], expected[mode])
        batch = httpx.post(server + "/extract/batch", json={"items": requests(mode)}, timeout=30)
        assert batch.status_code == 200, batch.text
        same(batch.json()["results"], expected[mode])


def test_sdk_sync_and_async(server, expected):
    with Client(server) as c:
        for mode in TASKS:
            same([r.model_dump() for r in c.run(requests(mode))], expected[mode])
        for text, want in zip(TEXTS, expected["entities"]):
            found = c.extract_entities(text, ["人名", "地名"], threshold=0.3, top_k=2)
            same({"entities": {t: [s.model_dump() for s in v] for t, v in found.items()}}, want)
        for text, want in zip(TEXTS, expected["schema"]):
            same(c.extract_schema(text, SCHEMA, threshold=0.3, relation_threshold=0.2).model_dump(), want)

    async def go():
        async with AsyncClient(server, batch_size=3) as c:
            return {mode: [r.model_dump() for r in await c.run(requests(mode))] for mode in TASKS}
    got = asyncio.run(go())
    for mode in TASKS:
        same(got[mode], expected[mode])


def _cli_flags(mode: str, tmp_path) -> list[str]:
    if mode != "schema":
        return FLAGS[mode]
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA, ensure_ascii=False), encoding="utf-8")
    return ["-s", str(path), *FLAGS[mode]]


@pytest.mark.parametrize("where", ["local", "url"])
def test_hugie_batch_local_and_url(where, tmp_path, trained_model_dir, server, expected):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(TEXTS)),
                   encoding="utf-8")
    target = ["--url", server] if where == "url" else ["--model", str(trained_model_dir), "--backend", "torch"]
    for mode in TASKS:
        out = tmp_path / f"{mode}.jsonl"
        res = CliRunner().invoke(cli, ["batch", str(src), "-o", str(out), *_cli_flags(mode, tmp_path), "--threshold",
                                       "0.3", "--no-progress", *target])
        assert res.exit_code == 0, res.output
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r.pop("id") for r in records] == list(range(len(TEXTS)))
        same(records, expected[mode])


def test_hugie_extract(trained_model_dir, tmp_path, expected):
    for mode in TASKS:
        res = CliRunner().invoke(cli, ["extract", TEXTS[2], *_cli_flags(mode, tmp_path), "--threshold", "0.3",
                                       "--model", str(trained_model_dir), "--backend", "torch"])
        assert res.exit_code == 0, res.output
        same(json.loads(res.stdout), expected[mode][2])


def test_ray_engine_actor(trained_model_dir, tmp_path, monkeypatch, expected):
    pytest.importorskip("ray")
    import numpy as np

    import hugie.distributed as hd

    def actors_in_process(ray, partitions, specs, collector, progress, name, verbose, actor_kwargs, **kwargs):
        actor = hd.ExtractActor(**actor_kwargs)
        for p in partitions:
            done = actor({"spec": np.array(specs(p), dtype=object)})
            for row in zip(done["part"], done["split"], done["kind"], done["chunk"], done["payload"]):
                collector.add(*row)

    monkeypatch.setattr(hd, "_init_ray", lambda *a: False)
    monkeypatch.setattr(hd, "_extract_on_ray", actors_in_process)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(TEXTS)),
                   encoding="utf-8")
    for mode in TASKS:
        task = batch_task(**TASKS[mode])
        out = tmp_path / f"{mode}.jsonl"
        hd.run_batch_ray(str(src), out, task=task, model=str(trained_model_dir), backend="torch", device="cpu",
                         batch_size=2, partition_docs=2, split_docs=2, progress=False)
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r.pop("id") for r in records] == list(range(len(TEXTS)))
        same(records, expected[mode])
        local = tmp_path / f"{mode}.local.jsonl"
        from hugie.batch import LocalRunner

        run_batch(str(src), local, LocalRunner(Extractor.load(trained_model_dir, backend="torch"), task),
                  batch_size=2, progress=False)
        assert out.read_text(encoding="utf-8") == local.read_text(encoding="utf-8")
