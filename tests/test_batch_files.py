"""``hugie batch`` file problems (issue 23): each is one catalogued line and exit 2 before any model loads;
the output is locked for the whole run; a UTF-8 BOM keeps line 1; UTF-16 input is refused up front."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hugie.batch
from hugie.batch import BOM, Cursor, LocalRunner, batch_task, output_lock, read_inputs, run_batch
from hugie.cli import app
from hugie.errors import HugieError
from tests.test_api import PER, make_extractor
from tests.test_batch import REPO, docs, read_jsonl, write

UTF16 = '{"id": "a", "text": "张三"}\n{"id": "b", "text": "李四"}\n'


@pytest.fixture
def runner(tiny_tokenizer):
    return LocalRunner(make_extractor(tiny_tokenizer)[0], batch_task(instruction=PER))


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI loads a model."""
    from hugie.extractor import Extractor

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the file problem was found")

    monkeypatch.setattr(Extractor, "load", classmethod(load))


@pytest.fixture
def src(tmp_path) -> Path:
    return write(tmp_path / "in.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs(3)))


def batch(*args):
    return CliRunner().invoke(app, ["batch", *map(str, args), "-i", PER, "--no-progress"])


def assert_fails(result, code: str, *words: str) -> str:
    """Exit 2 with one line ``error: [code] ...`` naming ``words``, and no traceback."""
    out = result.output.strip()
    assert result.exit_code == 2, (result.output, result.exception)
    assert out.startswith(f"error: [{code}] ") and "\n" not in out and "Traceback" not in out, out
    for word in words:
        assert word in out, (word, out)
    return out


# ---------------------------------------------------------------------- before the model loads
def test_input_problems_are_catalogued_before_the_model_loads(tmp_path, no_model):
    out = tmp_path / "out.jsonl"
    assert_fails(batch(tmp_path / "missing.jsonl", "-o", out), "E024", "missing.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    assert_fails(batch(tmp_path / "dir.jsonl", "-o", out), "E033", "dir.jsonl", "input")
    (tmp_path / "noext").mkdir()
    assert_fails(batch(tmp_path / "noext", "-o", out), "E033")
    unreadable = write(tmp_path / "secret.jsonl", "{}\n")
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads it anyway
        assert_fails(batch(unreadable, "-o", out), "E034", "secret.jsonl", "Permission denied")
    assert not out.exists() and not (tmp_path / "out.errors.jsonl").exists()


@pytest.mark.parametrize("data, encoding", [
    (UTF16.encode("utf-16"), "UTF-16-LE"),  # Python writes a little-endian BOM
    (b"\xfe\xff" + UTF16.encode("utf-16-be"), "UTF-16-BE"),
    (UTF16.encode("utf-16-le"), "UTF-16-LE without a byte-order mark"),
    (UTF16.encode("utf-32"), "UTF-32-LE"),
], ids=["utf16-le-bom", "utf16-be-bom", "utf16-le", "utf32"])
def test_utf16_input_is_refused_up_front(tmp_path, no_model, data, encoding):
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    out = tmp_path / "out.jsonl"
    assert_fails(batch(src, "-o", out), "E036", "in.jsonl", "not UTF-8", encoding)
    assert not out.exists() and not (tmp_path / "out.errors.jsonl").exists(), "nothing written"


def test_utf16_on_stdin_is_refused(tmp_path, runner, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(UTF16.encode("utf-16"))))
    with pytest.raises(HugieError, match=r"\[E036\] stdin is not UTF-8.*UTF-16-LE"):
        run_batch("-", tmp_path / "out.jsonl", runner, progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_output_and_errors_file_problems_are_catalogued_before_the_model_loads(tmp_path, src, no_model,
                                                                               monkeypatch):
    (tmp_path / "taken").mkdir()
    assert_fails(batch(src, "-o", tmp_path / "taken"), "E033", "taken", "output")
    assert_fails(batch(src, "-o", "/proc/hugie/out.jsonl"), "E035", "/proc/hugie/out.jsonl", "output")
    assert_fails(batch(src, "-o", "/proc/out.jsonl"), "E035", "No such file or directory")
    out = tmp_path / "out.jsonl"
    assert_fails(batch(src, "-o", out, "--errors", "/proc/errors.jsonl"), "E035", "errors file", "/proc/errors.jsonl")
    assert_fails(batch(src, "-o", out, "--errors", tmp_path / "taken"), "E033", "errors file")
    assert not out.exists(), "a run that never started leaves no output behind"
    assert_fails(batch(src, "-o", src, "--resume"), "E038", "in.jsonl", "output", "input")
    assert_fails(batch(src, "-o", out, "--errors", out), "E038", "errors file", "output")
    assert_fails(batch(src, "-o", out, "--errors", src), "E038", "errors file", "input")
    assert src.read_text(encoding="utf-8").count("\n") == 3, "the input is never touched"

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: make the directory refuse as it would for a user
        real_open = os.open

        def refusing_open(path, *args, **kwargs):
            if str(path).startswith(str(readonly)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    assert_fails(batch(src, "-o", readonly / "out.jsonl"), "E035", "Permission denied", "output")


def test_library_runs_raise_catalogued_errors_not_os_errors(tmp_path, src, runner):
    (tmp_path / "d").mkdir()
    with pytest.raises(HugieError, match="E033"):
        run_batch(str(tmp_path / "d"), tmp_path / "out.jsonl", runner, progress=False)
    with pytest.raises(HugieError, match="E035"):
        run_batch(str(src), "/proc/out.jsonl", runner, progress=False)
    with pytest.raises(HugieError, match="E033"):
        run_batch(str(src), tmp_path / "d", runner, progress=False)


# ---------------------------------------------------------------------- BOM
@pytest.mark.parametrize("name, body, ids", [
    ("in.jsonl", '{"id": "a", "text": "张三"}\n{"id": "b", "text": "李四"}\n', ["a", "b"]),
    ("in.txt", "张三\n李四\n", [1, 2]),
    ("in.csv", "id,text\na,张三\nb,李四\n", ["a", "b"]),
    ("in.tsv", "id\ttext\na\t张三\nb\t李四\n", ["a", "b"]),
])
def test_a_utf8_bom_does_not_cost_line_1(tmp_path, runner, name, body, ids):
    src = tmp_path / name
    src.write_bytes(BOM + body.encode())
    stats = run_batch(str(src), tmp_path / "out.jsonl", runner, progress=False)
    got = [(r["id"], r["spans"][0]["text"]) for r in read_jsonl(tmp_path / "out.jsonl")]
    assert got == [(ids[0], "张三"), (ids[1], "李四")]
    assert stats.errors == 0 and read_jsonl(tmp_path / "out.errors.jsonl") == []
    cursor = Cursor()
    list(read_inputs(str(src), cursor=cursor))
    assert cursor.pos == src.stat().st_size, "byte positions count the BOM (the Ray engine cuts partitions there)"


def test_a_partition_after_the_first_keeps_its_first_bytes(tmp_path):
    src = tmp_path / "in.jsonl"
    first = BOM + b'{"id": "a", "text": "x"}\n'
    src.write_bytes(first + b'{"id": "b", "text": "y"}\n')
    [record] = read_inputs(str(src), start=len(first), first_line=2)
    assert (record.line, record.id) == (2, "b")


# ---------------------------------------------------------------------- the output lock
def test_a_locked_output_fails_at_once_with_or_without_resume(tmp_path, src, runner, no_model):
    out = tmp_path / "out.jsonl"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process running on it would
        for resume in (False, True):
            with pytest.raises(HugieError, match=r"\[E037\].*out.jsonl.*in use"):
                run_batch(str(src), out, runner, resume=resume, progress=False)
            assert_fails(batch(src, "-o", out, *(["--resume"] if resume else [])), "E037", "out.jsonl")
        assert out.read_bytes() == b"" and not (tmp_path / "out.errors.jsonl").exists()
    finally:
        os.close(fd)
    assert out.exists(), "the lock holder's file stays"
    assert run_batch(str(src), out, runner, progress=False).written == 3


def test_the_lock_is_reentrant_in_one_thread_only_and_released_after_the_run(tmp_path, src, runner):
    out = tmp_path / "out.jsonl"
    with output_lock(out):
        assert run_batch(str(src), out, runner, progress=False).written == 3  # the CLI locks, then run_batch
        caught = []
        thread = threading.Thread(target=lambda: caught.append(pytest.raises(HugieError, run_batch, str(src), out,
                                                                             runner, resume=True, progress=False)))
        thread.start()
        thread.join(30)
        assert caught and caught[0].value.code == "E037"
    assert not hugie.batch._HELD
    assert run_batch(str(src), out, runner, resume=True, progress=False).skipped == 3


def test_a_failed_run_leaves_no_empty_output_and_keeps_an_earlier_one(tmp_path, src, runner):
    def broken(texts):
        raise RuntimeError("the model fell over")

    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        run_batch(str(src), out, broken, progress=False)
    assert not out.exists() and not (tmp_path / "out.errors.jsonl").exists()
    run_batch(str(src), out, runner, progress=False)
    before = out.read_bytes()
    with open(src, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "new", "text": "赵云"}, ensure_ascii=False) + "\n")
    with pytest.raises(RuntimeError):
        run_batch(str(src), out, broken, resume=True, progress=False)
    assert out.read_bytes() == before, "an output this run did not create is never removed"


LAUNCHER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from tests.conftest import tiny_pieces
from tests.test_api import ANSWERS, GatedBackend
from hugie.extractor import Extractor
from hugie.modeling import HugieConfig
from hugie.tokenization import HugieTokenizer, build_unigram_tokenizer


class Held(GatedBackend):
    def score(self, *args):
        open({blocked!r}, "w").close()
        while not os.path.exists({release!r}):
            time.sleep(0.01)
        return super().score(*args)


tok = HugieTokenizer(build_unigram_tokenizer(tiny_pieces(), unk_id=3), max_length=128)
cfg = HugieConfig(max_span_width=16, threshold=0.5, max_seq_length=128)
Extractor.load = classmethod(lambda cls, *a, **k: cls(Held(tok, ANSWERS), tok, cfg))
from hugie.cli import app
app()
"""


def test_two_resume_runs_on_one_output_the_second_fails_at_once(tmp_path, no_model):
    n = 40
    src = write(tmp_path / "in.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs(n)))
    blocked, release = tmp_path / "blocked", tmp_path / "release"
    launcher = write(tmp_path / "launch.py", LAUNCHER.format(repo=str(REPO), blocked=str(blocked),
                                                             release=str(release)))
    out = tmp_path / "out.jsonl"
    args = ["batch", str(src), "-o", str(out), "-i", PER, "--batch-size", "4", "--no-progress", "--resume"]
    proc = subprocess.Popen([sys.executable, str(launcher), *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(6000):  # the first run holds its model call
            if blocked.exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        start = time.monotonic()
        second = CliRunner().invoke(app, args)
        assert_fails(second, "E037", "out.jsonl", "--resume")
        assert time.monotonic() - start < 10, "fails at once"
    finally:
        release.touch()
        proc.wait(120)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert [r["id"] for r in read_jsonl(out)] == [d["id"] for d in docs(n)], "every record exactly once"


# ---------------------------------------------------------------------- --url errors
def test_url_errors_keep_their_code_in_the_cli(tmp_path, src, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the client's retry backoff
    out = tmp_path / "out.jsonl"
    result = batch(src, "-o", out, "--url", "http://127.0.0.1:1")
    assert result.exit_code == 2, result.output
    assert "error: HTTP 0 [connection] ConnectError" in result.output and "rerun with --resume" in result.output
    assert not out.exists()
    result = batch(src, "-o", out, "--url", "127.0.0.1:1")
    assert result.exit_code == 2 and "error: HTTP 0 [url]" in result.output and "http://" in result.output
