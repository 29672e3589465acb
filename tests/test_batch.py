"""``hugie batch``: formats, errors file, resume (incl. a SIGKILLed CLI run), workers, --url mode."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hugie.api import create_app

from hugie.batch import LocalRunner, RemoteRunner, batch_task, errors_path_for, load_schema, run_batch
from hugie.client import Client
from hugie.errors import HugieError
from tests.test_api import ANSWERS, PER, make_extractor, make_settings
from tests.test_client import running_server

REPO = Path(__file__).resolve().parents[1]
NAMES = [n for n, _ in ANSWERS[PER]]


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def runner(tiny_tokenizer):
    return LocalRunner(make_extractor(tiny_tokenizer)[0], batch_task(instruction=PER))


def docs(n: int) -> list[dict]:
    return [{"id": f"doc-{i}", "text": f"{NAMES[i % len(NAMES)]}去了北京。第{i}篇"} for i in range(n)]


def test_jsonl_results_and_bad_records_to_the_errors_file(tmp_path, runner):
    lines = ['{"id": "a", "text": "张三去了北京"}', '{"id": "b", "text": "李四和赵云"}', "not json",
             '{"id": "c"}', '{"id": "d", "text": 5}', '[1, 2]', '{"id": "a", "text": "again"}', "",
             '{"text": "陈静"}', '{"id": {"x": 1}, "text": "张三"}']
    src = write(tmp_path / "in.jsonl", "\n".join(lines) + "\n")
    stats = run_batch(str(src), tmp_path / "out.jsonl", runner, batch_size=2, progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["id"], [s["text"] for s in r["spans"]]) for r in out] == [
        ("a", ["张三"]), ("b", ["赵云", "李四"]), (9, ["陈静"])]  # no id field: the line number
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert [(e["line"], e["code"]) for e in errors] == [(3, "E020"), (4, "E021"), (5, "E021"), (6, "E023"),
                                                       (7, "E023"), (10, "E021")]
    reasons = [e["error"] for e in errors]
    assert "in.jsonl:3: invalid JSON" in reasons[0]
    assert "'text' is missing" in reasons[1] and "must be a string, got int" in reasons[2]
    assert "JSON object" in reasons[3] and "duplicate id 'a' (first at line 1)" in reasons[4]
    assert errors[1]["id"] == "c"
    assert (stats.written, stats.errors, stats.read) == (3, 6, 9)


def test_txt_csv_tsv_and_stdin(tmp_path, runner, monkeypatch):
    src = write(tmp_path / "in.txt", "张三来了\n\n李四来了\r\n赵云\n")
    run_batch(str(src), tmp_path / "txt.jsonl", runner, progress=False)
    assert [(r["id"], r["spans"][0]["text"]) for r in read_jsonl(tmp_path / "txt.jsonl")] == [
        (1, "张三"), (3, "李四"), (4, "赵云")]

    src = write(tmp_path / "in.csv", 'key,body\nk1,"张三, 李四"\nk2,"多行\n陈静"\n,赵云\n')
    run_batch(str(src), tmp_path / "csv.jsonl", runner, text_field="body", id_field="key", progress=False)
    got = [(r["id"], [s["text"] for s in r["spans"]]) for r in read_jsonl(tmp_path / "csv.jsonl")]
    assert got == [("k1", ["张三", "李四"]), ("k2", ["陈静"]), (5, ["赵云"])]  # empty id: the line number

    src = write(tmp_path / "in.tsv", "id\ttext\nt1\t周杰伦在上海\n")
    run_batch(str(src), tmp_path / "tsv.jsonl", runner, progress=False)
    assert read_jsonl(tmp_path / "tsv.jsonl")[0]["spans"][0]["text"] == "周杰伦"
    with pytest.raises(HugieError, match="'text2' is not a column"):
        run_batch(str(src), tmp_path / "bad.jsonl", runner, text_field="text2", progress=False)

    stdin = io.TextIOWrapper(io.BytesIO('{"id": 1, "text": "张三"}\n{"id": 2, "text": "孙悟空"}\n'.encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    run_batch("-", tmp_path / "stdin.jsonl", runner, progress=False)
    assert [r["spans"][0]["text"] for r in read_jsonl(tmp_path / "stdin.jsonl")] == ["张三", "孙悟空"]

    with pytest.raises(HugieError, match="unknown input format"):
        run_batch(str(write(tmp_path / "in.xml", "<a/>")), tmp_path / "x.jsonl", runner, progress=False)
    with pytest.raises(HugieError, match="file not found"):
        run_batch(str(tmp_path / "missing.jsonl"), tmp_path / "x.jsonl", runner, progress=False)


def test_invalid_utf8_line_is_an_error_not_a_crash(tmp_path, runner):
    src = tmp_path / "in.txt"
    src.write_bytes("张三\n".encode() + b"\xff\xfe bad\n" + "李四\n".encode())
    run_batch(str(src), tmp_path / "out.jsonl", runner, progress=False)
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == [1, 3]
    assert [(e["line"], e["code"]) for e in read_jsonl(tmp_path / "out.errors.jsonl")] == [(2, "E023")]


def test_schema_mode(tmp_path, tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)
    schema = load_schema(write(tmp_path / "schema.json", json.dumps({"entities": ["人名", "地名"]})))
    src = write(tmp_path / "in.jsonl", json.dumps({"id": 1, "text": "张三去了北京"}, ensure_ascii=False) + "\n")
    run_batch(str(src), tmp_path / "out.jsonl", LocalRunner(ex, batch_task(schema=schema)), progress=False)
    [rec] = read_jsonl(tmp_path / "out.jsonl")
    assert rec["id"] == 1 and rec["relations"] == []
    assert [(e["type"], e["text"]) for e in rec["entities"]] == [("人名", "张三"), ("地名", "北京")]
    with pytest.raises(HugieError, match="E005"):
        load_schema(write(tmp_path / "bad.json", "{}"))
    with pytest.raises(HugieError, match="E006"):
        load_schema(write(tmp_path / "bad.json", '{"relations": [{"subject": "人名"}]}'))
    with pytest.raises(HugieError, match=r"E003.*got 2"):
        load_schema(write(tmp_path / "bad.json", '{"entities": ["人名"], "relation_threshold": 2}'))
    assert load_schema(write(tmp_path / "s.json", '{"entities": ["人名"], "relation_threshold": 0.9}')) == \
        {"entities": ["人名"], "relation_threshold": 0.9}


def test_entity_types_mode(tmp_path, tiny_tokenizer):
    ex, _ = make_extractor(tiny_tokenizer)
    src = write(tmp_path / "in.jsonl", json.dumps({"id": 1, "text": "张三去了北京"}, ensure_ascii=False) + "\n")
    run_batch(str(src), tmp_path / "out.jsonl", LocalRunner(ex, batch_task(entities=["人名", "地名"])), progress=False)
    [rec] = read_jsonl(tmp_path / "out.jsonl")
    assert rec["id"] == 1 and sorted(rec["entities"]) == ["人名", "地名"]
    assert [s["text"] for s in rec["entities"]["人名"]] == ["张三"]
    assert [s["text"] for s in rec["entities"]["地名"]] == ["北京"]
    with pytest.raises(HugieError, match="E009"):
        batch_task(entities=["人名", " "])
    with pytest.raises(HugieError, match="E029"):
        batch_task(entities=["人名"], instruction=PER)


def test_resume_skips_done_records_and_cuts_a_torn_last_line(tmp_path, runner):
    src = tmp_path / "in.jsonl"
    write(src, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs(20)) + "oops\n")
    full = tmp_path / "full.jsonl"
    run_batch(str(src), full, runner, batch_size=3, progress=False)
    expected = full.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(expected) == 20

    out = tmp_path / "out.jsonl"  # a crashed run: 7 records, then half of the 8th
    out.write_text("".join(expected[:7]) + expected[7][: len(expected[7]) // 2], encoding="utf-8")
    stats = run_batch(str(src), out, runner, batch_size=4, resume=True, progress=False)
    assert out.read_text(encoding="utf-8").splitlines(keepends=True) == expected
    assert (stats.skipped, stats.written, stats.errors) == (7, 13, 1)

    # resuming a finished run does nothing, and the bad line is not reported twice
    stats = run_batch(str(src), out, runner, resume=True, progress=False)
    assert (stats.skipped, stats.written, stats.errors) == (20, 0, 0)
    assert len(read_jsonl(errors_path_for(out))) == 1


def test_existing_output_needs_resume_or_overwrite_and_damage_is_refused(tmp_path, runner):
    src = write(tmp_path / "in.txt", "张三\n李四\n")
    out = tmp_path / "out.jsonl"
    run_batch(str(src), out, runner, progress=False)
    with pytest.raises(HugieError, match="--resume"):
        run_batch(str(src), out, runner, progress=False)
    run_batch(str(src), out, runner, overwrite=True, progress=False)
    assert len(read_jsonl(out)) == 2
    write(out, '{"id": 1, "spans": []}\ngarbage\n{"id": 2, "spans": []}\n')
    with pytest.raises(HugieError, match="out.jsonl:2.*damaged"):
        run_batch(str(src), out, runner, resume=True, progress=False)


def test_workers_keep_input_order(tmp_path, runner):
    src = write(tmp_path / "in.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs(30)))
    run_batch(str(src), tmp_path / "out.jsonl", runner, batch_size=2, workers=3, progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == [d["id"] for d in docs(30)]
    assert [r["spans"][0]["text"] for r in out] == [NAMES[i % len(NAMES)] for i in range(30)]


def test_url_mode_through_the_sdk(tmp_path, tiny_tokenizer, runner):
    ex, _ = make_extractor(tiny_tokenizer)
    lines = [json.dumps(d, ensure_ascii=False) for d in docs(9)]
    lines.insert(4, json.dumps({"id": "long", "text": "张三" * 30}))  # over the server's text limit
    src = write(tmp_path / "in.jsonl", "\n".join(lines) + "\n")
    run_batch(str(src), tmp_path / "local.jsonl", runner, progress=False)
    with running_server(create_app(make_settings(max_text_chars=50, max_batch_items=4), extractor=ex)) as (url, _):
        with Client(url, batch_size=4) as client:
            stats = run_batch(str(src), tmp_path / "remote.jsonl", RemoteRunner(client, batch_task(instruction=PER)), batch_size=4,
                              workers=2, progress=False)
    remote = read_jsonl(tmp_path / "remote.jsonl")
    local = [r for r in read_jsonl(tmp_path / "local.jsonl") if r["id"] != "long"]
    assert remote == local and len(remote) == 9
    [err] = read_jsonl(tmp_path / "remote.errors.jsonl")
    assert (err["line"], err["id"], err["code"]) == (5, "long", "E100")
    assert "60 characters" in err["error"] and "limit is 50" in err["error"]
    assert stats.errors == 1


LAUNCHER = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.conftest import tiny_pieces
from tests.test_api import ANSWERS, GatedBackend
from hugie.extractor import Extractor
from hugie.modeling import HugieConfig
from hugie.tokenization import HugieTokenizer, build_unigram_tokenizer


class Slow(GatedBackend):
    def score(self, *args):
        time.sleep(0.02)
        return super().score(*args)


tok = HugieTokenizer(build_unigram_tokenizer(tiny_pieces(), unk_id=3), max_length=128)
cfg = HugieConfig(max_span_width=16, threshold=0.5, max_seq_length=128)
Extractor.load = classmethod(lambda cls, *a, **k: cls(Slow(tok, ANSWERS), tok, cfg))
from hugie.cli import app
app()
"""


def test_cli_killed_mid_run_then_resumed_loses_and_duplicates_nothing(tmp_path):
    n = 400
    lines = [json.dumps(d, ensure_ascii=False) for d in docs(n)]
    bad = {37: "{broken", 150: '{"id": "x150"}', 333: '{"id": "x333", "text": null}'}
    for at, line in sorted(bad.items()):
        lines.insert(at, line)
    src = write(tmp_path / "in.jsonl", "\n".join(lines) + "\n")
    launcher = write(tmp_path / "launch.py", LAUNCHER.format(repo=str(REPO)))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, str(launcher), "batch", str(src), "-o", str(out), "-i", PER, "--batch-size", "4",
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(6000):
            if out.exists() and out.read_bytes().count(b"\n") >= 60 or proc.poll() is not None:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    raw = out.read_bytes()
    partial = raw[:raw.rfind(b"\n") + 1].decode().splitlines()
    assert 0 < len(partial) < n, "killed mid-run"
    if raw.endswith(b"\n"):  # as if the crash had also torn the line it was writing
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"id": f"doc-{len(partial)}", "spans": []})[:15])

    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = read_jsonl(out)
    ids = [r["id"] for r in records]
    assert ids == [d["id"] for d in docs(n)], "every record exactly once, in order"
    assert all(r["spans"][0]["text"] == NAMES[i % len(NAMES)] for i, r in enumerate(records))
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert sorted(e["line"] for e in errors) == [at + 1 for at in sorted(bad)]


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory, tiny_tokenizer):
    """An untrained tiny model saved as a model dir (the CLI plumbing does not need a trained one)."""
    from tests.conftest import tiny_model

    directory = tmp_path_factory.mktemp("tiny_random")
    tiny_model(tiny_tokenizer).save_pretrained(directory)
    tiny_tokenizer.save(directory)
    return directory


def test_cli_with_a_model_dir(tmp_path, random_model_dir):
    src = write(tmp_path / "in.txt", "张三去了北京\n\n李四在上海\n")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "hugie.cli", "batch", str(src), "-o", str(out), "-i", PER, "--model",
           str(random_model_dir), "--backend", "torch", "--device", "cpu", "--threshold", "0.0", "--top-k", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 records" in done.stderr
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [1, 3]
    texts = {1: "张三去了北京", 3: "李四在上海"}
    for r in records:
        assert len(r["spans"]) == 2 and all(texts[r["id"]][s["start"]:s["end"]] == s["text"] for s in r["spans"])
    from typer.testing import CliRunner

    from hugie.cli import app

    again = CliRunner().invoke(app, cmd[3:])  # in-process: the output exists now
    assert again.exit_code == 2 and "--resume" in again.output
    neither = CliRunner().invoke(app, cmd[3:7])
    assert neither.exit_code != 0 and "exactly one of --instruction, --entities, --schema" in neither.output
