"""``hugie batch``: run one instruction, list of entity types or schema over a file of documents, resumably.

Inputs: ``.jsonl`` (text/id fields), ``.txt`` (one document per line; id = line number),
``.csv`` / ``.tsv`` (text/id columns), ``.parquet`` (text/id columns; id = row number; needs
pyarrow), or ``-`` for stdin; a path may also be an fsspec URL (``s3://…``, ``gs://…``, ``https://…``).
Output: JSONL, one record per input document: its id and the result of its request
(``{"id": ..., "spans": [...]}``, ``{"id": ..., "entities": {type: [...]}}`` or ``{"id": ...,
"entities": [...], "relations": [...]}``), in input order and flushed as it goes.
``hugie batch --engine ray`` runs the same on a Ray cluster (see ``hugie.distributed``).

Records that cannot be processed (invalid JSON, missing or non-string text, duplicate id, an
input the model rejects) go to the errors file with their line number and reason; the run goes on.

``resume=True`` continues after a crash: ids already in the output and lines already in the
errors file are skipped, and a torn last line (the write the crash interrupted) is cut off, so
every input record ends up exactly once in the output or the errors file. A run holds an exclusive
lock on its output (``flock``), so a second run on the same output fails at once (E037).

File problems (a missing or unreadable input, a directory, a UTF-16 file, an output that cannot be
written) are catalogued errors raised by :func:`claim_files` before any model loads; a UTF-8 BOM
is skipped.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HugieError
from .types import Schema, as_request, request_dict

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no output lock
    fcntl = None

log = logging.getLogger("hugie.batch")

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "txt", ".csv": "csv", ".tsv": "tsv",
           ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}
CHOICES = ("auto", "jsonl", "txt", "csv", "tsv", "parquet")


@dataclass
class Record:
    """One input document."""

    line: int
    id: Any
    text: str


@dataclass
class BadRecord:
    """An input line that cannot become a document; goes to the errors file."""

    line: int
    code: str
    reason: str
    id: Any = None


@dataclass
class BatchStats:
    read: int = 0        # documents and bad records seen in the input
    written: int = 0     # records written to the output in this run
    skipped: int = 0     # already done by an earlier run (resume)
    errors: int = 0      # records sent to the errors file in this run
    seconds: float = 0.0
    output: str = ""
    errors_file: str = ""

    @property
    def docs_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------- input
def detect_format(path: str, fmt: str = "auto") -> str:
    if fmt not in CHOICES:
        raise HugieError("E022", file=path, format=fmt, choices=", ".join(CHOICES))
    if fmt != "auto":
        return fmt
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise HugieError("E022", file=path, format=suffix or "(no extension)",
                         choices=", ".join(sorted(FORMATS)) + " (or pass --format)")
    return FORMATS[suffix]


def is_url(path: str) -> bool:
    """``s3://…``, ``gs://…``, ``https://…``: read through fsspec."""
    return "://" in str(path)


def input_exists(path: str) -> bool:
    if path == "-":
        return True
    if is_url(path):
        import fsspec

        fs, target = fsspec.core.url_to_fs(path)
        return fs.exists(target)
    return Path(path).exists()


def open_binary(path: str):
    """A binary file object for a local path or an fsspec URL."""
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


@dataclass
class Cursor:
    """Where a reader stands: bytes (rows for Parquet) consumed and the last line number read.

    The Ray engine cuts the input into partitions at these positions and re-reads each one with
    ``read_inputs(..., start=, end=, first_line=)``; ``columns`` is the CSV header.
    """

    pos: int = 0
    line: int = 0
    columns: list[str] | None = None


BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32-LE"), (b"\x00\x00\xfe\xff", "UTF-32-BE"), (b"\xff\xfe", "UTF-16-LE"),
              (b"\xfe\xff", "UTF-16-BE"))


def encoding_problem(head: bytes) -> str | None:
    """Why a file starting with ``head`` is not UTF-8 text (a UTF-16/32 byte-order mark, NUL bytes in the
    first KB), naming the encoding it looks like; None when it may well be UTF-8."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return f"it starts with a {name} byte-order mark (iconv -f {name} -t UTF-8 converts it)"
    head = head[:1024]
    if b"\x00" not in head:
        return None
    even, odd = head[0::2].count(0), head[1::2].count(0)
    guess = "UTF-16-LE" if odd > 2 * even else "UTF-16-BE" if even > 2 * odd else None
    return (f"it has NUL bytes in its first KB, as {guess} without a byte-order mark would" if guess
            else "it has NUL bytes in its first KB (a binary file?)")


def _binary_lines(path: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Raw lines (with their end of line) from byte ``start`` to the first line starting at or after ``end``;
    E036 when the file starts like UTF-16 rather than UTF-8."""
    if path == "-":
        fh, close = sys.stdin.buffer, False
    else:
        fh, close = open_binary(path), True
    try:
        if start:
            fh.seek(start)
        pos = start
        for raw in fh:
            if end is not None and pos >= end:
                return
            if pos == 0 and (why := encoding_problem(raw)):
                raise HugieError("E036", file=input_label(path) if path == "-" else path, reason=why)
            pos += len(raw)
            yield raw
    finally:
        if close:
            fh.close()


def _numbered(raws: Iterator[bytes], first_line: int, cursor: Cursor | None,
              at_start: bool) -> Iterator[tuple[int, bytes]]:
    """``(line, raw)``; a UTF-8 BOM is cut from the file's first line (``at_start``) once counted."""
    line = first_line - 1
    for raw in raws:
        line += 1
        if cursor is not None:
            cursor.pos += len(raw)
            cursor.line = line
        if at_start:
            raw, at_start = raw.removeprefix(BOM), False
        yield line, raw


def _bad(line: int, code: str, rid: Any = None, **details) -> BadRecord:
    """A bad record with its message from the catalogue."""
    return BadRecord(line, code, HugieError(code, line=line, **details).message, rid)


def _decode(raw: bytes, line: int, file: str) -> str | BadRecord:
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return _bad(line, "E023", file=file, reason=f"not valid UTF-8 ({exc})")


def _valid_id(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_REASON = "has a lone surrogate (a \\ud800-\\udfff escape): not valid Unicode"


def _read_jsonl(path: str, text_field: str, id_field: str, start: int = 0, end: int | None = None,
                first_line: int = 1, cursor: Cursor | None = None,
                name: str | None = None) -> Iterator[Record | BadRecord]:
    name = name or path
    for line, raw in _numbered(_binary_lines(path, start, end), first_line, cursor, start == 0):
        decoded = _decode(raw, line, name)
        if isinstance(decoded, BadRecord):
            yield decoded
            continue
        if not decoded.strip():
            continue
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError as exc:
            yield _bad(line, "E020", file=name, reason=exc.msg)
            continue
        if not isinstance(obj, dict):
            yield _bad(line, "E023", file=name, reason=f"record must be a JSON object, got {type(obj).__name__}")
            continue
        rid = obj.get(id_field)
        if rid is not None and not _valid_id(rid):
            yield _bad(line, "E021", file=name, field=id_field,
                       reason=f"must be a string or number, got {type(rid).__name__}")
            continue
        if isinstance(rid, str) and _SURROGATE.search(rid):  # a "\\ud800" escape: cannot be written back as UTF-8
            yield _bad(line, "E021", file=name, field=id_field, reason=_SURROGATE_REASON)
            continue
        rid = line if rid is None else rid
        text = obj.get(text_field)
        if text_field not in obj:
            yield _bad(line, "E021", rid, file=name, field=text_field, reason="is missing")
        elif not isinstance(text, str):
            yield _bad(line, "E021", rid, file=name, field=text_field,
                       reason=f"must be a string, got {type(text).__name__}")
        elif _SURROGATE.search(text):
            yield _bad(line, "E021", rid, file=name, field=text_field, reason=_SURROGATE_REASON)
        else:
            yield Record(line, rid, text)


def _read_txt(path: str, start: int = 0, end: int | None = None, first_line: int = 1,
              cursor: Cursor | None = None, name: str | None = None) -> Iterator[Record | BadRecord]:
    name = name or path
    for line, raw in _numbered(_binary_lines(path, start, end), first_line, cursor, start == 0):
        decoded = _decode(raw, line, name)
        if isinstance(decoded, BadRecord):
            yield decoded
        elif decoded.strip():
            yield Record(line, line, decoded)


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _text_lines(raws: Iterator[bytes], cursor: Cursor, end: int | None = None) -> Iterator[str]:
    r"""Lines as ``open(newline="")`` gives them (ends kept; ``\n``, ``\r\n`` or a lone ``\r``), counted,
    up to the first one starting at or after byte ``end``; a UTF-8 BOM at byte 0 is cut off once counted."""
    for raw in raws:
        for piece in (_LONE_CR.split(raw) if b"\r" in raw else (raw,)):
            if end is not None and cursor.pos >= end:
                return
            if piece:
                at_start = cursor.pos == 0
                cursor.pos += len(piece)
                cursor.line += 1
                yield (piece.removeprefix(BOM) if at_start else piece).decode("utf-8", errors="surrogateescape")


def _read_table(path: str, delimiter: str, text_field: str, id_field: str, start: int = 0, end: int | None = None,
                first_line: int = 1, cursor: Cursor | None = None,
                columns: list[str] | None = None, name: str | None = None) -> Iterator[Record | BadRecord]:
    """CSV/TSV rows; a row's line is the last physical line it spans. ``columns``: the header, when
    reading from a ``start`` past it."""
    name = name or path
    cursor = cursor if cursor is not None else Cursor(start, first_line - 1)
    reader = csv.DictReader(_text_lines(_binary_lines(path, start, end), cursor, end), fieldnames=columns,
                            delimiter=delimiter)
    columns = reader.fieldnames or []
    cursor.columns = list(columns)
    if text_field not in columns:
        raise HugieError("E021", file=name, line=1, field=text_field,
                         reason=f"is not a column (columns: {', '.join(columns) or 'none'}); use --text-field")
    for row in reader:
        line = cursor.line
        text = row.get(text_field)
        rid = row.get(id_field) if id_field in columns and row.get(id_field) not in (None, "") else line
        if text is None:
            yield _bad(line, "E021", rid, file=name, field=text_field, reason="is missing (short row)")
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            yield _bad(line, "E023", rid, file=name, reason="not valid UTF-8")
            continue
        if text.strip():
            yield Record(line, rid, text)


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise HugieError("E022", file="(parquet)", format="parquet",
                         choices="jsonl, txt, csv, tsv (Parquet needs pyarrow: pip install pyarrow)") from exc
    return pq


def parquet_rows(path: str) -> int:
    with open_binary(path) as fh:
        return _parquet().ParquetFile(fh).metadata.num_rows


def _read_parquet(path: str, text_field: str, id_field: str, start: int = 0, end: int | None = None,
                  cursor: Cursor | None = None, name: str | None = None) -> Iterator[Record | BadRecord]:
    """Rows ``[start, end)`` of a Parquet file; a row's line is its 1-based row number."""
    name = name or path
    if path == "-":
        raise HugieError("E022", file=name, format="parquet", choices="jsonl, txt, csv, tsv (stdin)")
    pq = _parquet()
    with open_binary(path) as fh:
        pf = pq.ParquetFile(fh)
        columns = pf.schema_arrow.names
        if text_field not in columns:
            raise HugieError("E021", file=name, line=1, field=text_field,
                             reason=f"is not a column (columns: {', '.join(columns) or 'none'}); use --text-field")
        wanted = [text_field] + ([id_field] if id_field in columns and id_field != text_field else [])
        first = 0
        for group in range(pf.num_row_groups):
            n = pf.metadata.row_group(group).num_rows
            if first + n <= start:
                first += n
                continue
            if end is not None and first >= end:
                return
            table = pf.read_row_group(group, columns=wanted)
            texts = table.column(text_field).to_pylist()
            ids = table.column(id_field).to_pylist() if id_field in wanted else [None] * n
            for offset in range(max(0, start - first), n):
                index = first + offset
                if end is not None and index >= end:
                    return
                line = index + 1
                if cursor is not None:
                    cursor.pos, cursor.line = index + 1, line
                rid, text = ids[offset], texts[offset]
                if rid is not None and rid != "" and not _valid_id(rid):
                    yield _bad(line, "E021", file=name, field=id_field,
                               reason=f"must be a string or number, got {type(rid).__name__}")
                    continue
                rid = line if rid is None or rid == "" else rid
                if text is None:
                    yield _bad(line, "E021", rid, file=name, field=text_field, reason="is missing (null)")
                elif not isinstance(text, str):
                    yield _bad(line, "E021", rid, file=name, field=text_field,
                               reason=f"must be a string, got {type(text).__name__}")
                elif text.strip():
                    yield Record(line, rid, text)
            first += n


def read_inputs(path: str, fmt: str = "auto", text_field: str = "text", id_field: str = "id", *,
                start: int = 0, end: int | None = None, first_line: int = 1, columns: list[str] | None = None,
                cursor: Cursor | None = None, name: str | None = None) -> Iterator[Record | BadRecord]:
    """Documents and bad records of ``path`` (``-`` = stdin, or an fsspec URL), in input order;
    blank lines are skipped.

    ``start``/``end`` (bytes; rows for Parquet), ``first_line`` and ``columns`` read one partition
    of the input, as cut by the Ray engine from a ``cursor`` that a full read kept up to date;
    ``name``: how messages spell the file (default ``path``).
    """
    fmt = check_input(path, fmt)
    if cursor is not None:
        cursor.pos, cursor.line = start, first_line - 1
    if fmt == "jsonl":
        return _read_jsonl(path, text_field, id_field, start, end, first_line, cursor, name)
    if fmt == "txt":
        return _read_txt(path, start, end, first_line, cursor, name)
    if fmt == "parquet":
        return _read_parquet(path, text_field, id_field, start, end, cursor, name)
    return _read_table(path, "," if fmt == "csv" else "\t", text_field, id_field, start, end, first_line, cursor,
                       columns, name)


def count_records(path: str, fmt: str = "auto") -> int | None:
    """Roughly how many records ``path`` holds (for the progress bar); None for stdin and URLs."""
    if path == "-" or is_url(path):
        return None
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        return parquet_rows(path)
    with open(path, "rb") as fh:
        n = sum(1 for raw in fh if raw.strip())
    return max(0, n - 1) if fmt in ("csv", "tsv") else n


def duplicate_error(item: Record, input: str, first_line: int) -> BadRecord:
    """The errors-file entry for a second record with an id already seen at ``first_line``."""
    return _bad(item.line, "E023", item.id, file=input,
                reason=f"duplicate id {item.id!r} (first at line {first_line}); ids must be unique")


# ---------------------------------------------------------------------- resume
def input_label(input: str) -> str:
    return Path(input).name if input != "-" else "stdin"


def _id_key(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _read_done(path: Path, key: str) -> list[Any]:
    """Values of ``key`` in a JSONL file we wrote; cuts a torn last line, refuses other damage."""
    if not path.exists():
        return []
    values, good_end = [], 0
    with open(path, "rb") as fh:
        lines = fh.readlines()
    offset = 0
    for number, raw in enumerate(lines, 1):
        offset += len(raw)
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("no end of line")
            values.append(json.loads(raw)[key])
            good_end = offset
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines):  # the write a crash interrupted
                log.warning("%s: cutting a torn last line (%d bytes)", path, len(raw))
                break
            raise HugieError("E020", file=path, line=number,
                             reason=f"{exc}; the file is damaged beyond its last line, cannot resume") from exc
    if good_end != offset:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return values


def check_output(output: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run's output unless told to resume or overwrite it."""
    output = Path(output)
    if not resume and not overwrite and output.exists() and output.stat().st_size > 0:
        raise HugieError("E023", file=output, line=0,
                         reason="output exists; pass --resume to continue it or --overwrite to replace it")


def errors_path_for(output: str | Path) -> Path:
    """``out.jsonl`` → ``out.errors.jsonl``."""
    output = Path(output)
    return output.with_name((output.stem if output.suffix else output.name) + ".errors.jsonl")


# ---------------------------------------------------------------------- file checks and the output lock
def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_input(path: str, fmt: str = "auto") -> str:
    """The input's format, once it is known to exist and be readable UTF-8 (local files: the first KB
    is checked); E024 / E033 / E034 / E036 / E022 otherwise."""
    local = path != "-" and not is_url(path)
    if local and Path(path).is_dir():
        raise HugieError("E033", file=path, role="input")
    if not input_exists(path):
        raise HugieError("E024", file=path)
    fmt = detect_format(path, fmt)
    if local:
        try:
            with open(path, "rb") as fh:
                head = fh.read(1024)
        except OSError as exc:
            raise HugieError("E034", file=path, role="input", reason=_reason(exc)) from exc
        if fmt != "parquet" and (why := encoding_problem(head)):
            raise HugieError("E036", file=path, reason=why)
    return fmt


def _writable(path: Path, role: str) -> None:
    """E033 / E035 unless ``path`` (and its directory) can be created and appended to."""
    if path.is_dir():
        raise HugieError("E033", file=path, role=role)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise HugieError("E035", file=path, role=role, reason=_reason(exc)) from exc


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


_HELD: dict[Path, list] = {}  # output -> [thread id, depth] of the locks this process holds


@contextmanager
def output_lock(output: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``output`` (created if need be; removed again if this call created it
    and the run failed before writing to it). Another run on it fails at once with E037; the same thread
    may take it again (the CLI takes it before loading the model, then :func:`run_batch` does)."""
    output = Path(output)
    if output.is_dir():
        raise HugieError("E033", file=output, role="output")
    key = output.absolute()
    held = _HELD.get(key)
    if held is not None and held[0] == threading.get_ident():
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    created = not output.exists()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(output, os.O_WRONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        raise HugieError("E035", file=output, role="output", reason=_reason(exc)) from exc
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                replaced = os.stat(output).st_ino != os.fstat(fd).st_ino  # removed by the run that held it
            except (BlockingIOError, FileNotFoundError):
                replaced = True
            except OSError as exc:  # a file system without locks
                raise HugieError("E035", file=output, role="output", reason=f"cannot lock it: {_reason(exc)}") from exc
            if replaced:
                raise HugieError("E037", file=output)
        _HELD[key] = [threading.get_ident(), 1]
        try:
            yield
        except BaseException:
            if created and os.fstat(fd).st_size == 0:
                output.unlink(missing_ok=True)
            raise
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


def locks_output(run: Callable) -> Callable:
    """Decorator for ``run(input, output, ...)``: hold :func:`output_lock` on ``output`` for the whole call."""

    @functools.wraps(run)
    def locked(input, output, *args, **kwargs):
        with output_lock(output):
            return run(input, output, *args, **kwargs)

    return locked


@contextmanager
def claim_files(input: str, output: str | Path, errors_file: str | Path | None = None, *, fmt: str = "auto",
                resume: bool = False, overwrite: bool = False) -> Iterator[str]:
    """Check every file of a run and hold the output lock while inside; yields the input format.

    Raises the catalogued error of the first problem (input missing, a directory, unreadable, not
    UTF-8; output or errors file not writable, a directory, the same file as another, the output
    locked by another run or holding an earlier run's records) — call it before loading a model."""
    output = Path(output)
    errors_file = Path(errors_file) if errors_file else errors_path_for(output)
    fmt = check_input(input, fmt)
    if _same_file(input, output):
        raise HugieError("E038", file=output, role="output", other="input")
    with output_lock(output):
        check_output(output, resume, overwrite)
        if _same_file(errors_file, output):
            raise HugieError("E038", file=errors_file, role="errors file", other="output")
        if _same_file(errors_file, input):
            raise HugieError("E038", file=errors_file, role="errors file", other="input")
        created = not errors_file.exists()
        _writable(errors_file, "errors file")
        try:
            yield fmt
        except BaseException:
            if created and errors_file.is_file() and not errors_file.stat().st_size:  # as for the output
                errors_file.unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------- runners
def batch_task(*, instruction: str | None = None, entities: Sequence[str] | None = None,
               schema: dict | Schema | None = None, **options) -> dict:
    """The request fields every document of a run shares (all but ``text``): exactly one of
    ``instruction``, ``entities``, ``schema``, and options (``threshold``, ``top_k``, ``language``,
    ``one_type_per_span``, ``flat_ner``, ``relation_threshold``) that are not None. Validated here,
    so a bad task fails with its catalogued error before any model loads."""
    task = request_dict(instruction=instruction, entities=None if entities is None else list(entities),
                        schema=schema, **options)
    as_request({**task, "text": ""})
    return task


def _requests(task: dict, texts: Sequence[str]) -> list[dict]:
    return [{**task, "text": t} for t in texts]


class LocalRunner:
    """Runs a batch :func:`batch_task` through an in-process Extractor."""

    def __init__(self, extractor, task: dict):
        self.extractor, self.task = extractor, task

    def __call__(self, texts: Sequence[str]) -> list[dict]:
        return [r.model_dump() for r in self.extractor.run(_requests(self.task, texts))]


class RemoteRunner:
    """Sends a batch :func:`batch_task` to a running ``hugie serve`` through the SDK."""

    def __init__(self, client, task: dict):
        self.client, self.task = client, task

    def __call__(self, texts: Sequence[str]) -> list[dict]:
        return [r.model_dump() for r in self.client.run(_requests(self.task, texts))]


def load_schema(path: str | Path) -> dict:
    """A schema file ``{"entities": [...], "relations": [{"subject", "predicate", "object"?}]}`` (which may also
    carry ``one_type_per_span``, ``flat_ner`` and ``relation_threshold``), read and validated."""
    path = Path(path)
    if not path.is_file():
        raise HugieError("E024", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise HugieError("E020", file=path, line=exc.lineno, reason=exc.msg) from exc
    except UnicodeDecodeError as exc:
        raise HugieError("E023", file=path, line=0, reason=f"not valid UTF-8 ({exc})") from exc
    if not isinstance(data, dict):
        raise HugieError("E005", keys=type(data).__name__)
    as_request({"text": "", "schema": data})
    return data


def _is_record_error(exc: BaseException) -> bool:
    """Errors that belong to the input (go to the errors file), not to the run (abort)."""
    from .client import HugieAPIError

    return isinstance(exc, HugieError) or (isinstance(exc, HugieAPIError) and exc.status in (413, 422))


def _process(runner: Callable[[Sequence[str]], list[dict]], chunk: list[Record]) -> list[dict | BaseException]:
    """Results for a chunk; when the input is rejected, each record alone so only the bad ones fail."""
    try:
        return runner([r.text for r in chunk])
    except Exception as exc:
        if not _is_record_error(exc):
            raise
        if len(chunk) == 1:
            return [exc]
    out: list[dict | BaseException] = []
    for record in chunk:
        try:
            out.append(runner([record.text])[0])
        except Exception as exc:
            if not _is_record_error(exc):
                raise
            out.append(exc)
    return out


def _error_reason(exc: BaseException) -> tuple[str, str]:
    code = getattr(exc, "code", type(exc).__name__)
    return str(code), getattr(exc, "message", str(exc))


# ---------------------------------------------------------------------- the run
def _progress(enabled: bool):
    """A rich progress bar on stderr: done/total, docs/s, elapsed and ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:,.1f} docs/s" if task.speed else "… docs/s", style="progress.data.speed")

    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        RateColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=Console(stderr=True), disable=not enabled, transient=False)
    return progress


def run_batch(input: str, output: str | Path, runner: Callable[[Sequence[str]], list[dict]], *,
              fmt: str = "auto", text_field: str = "text", id_field: str = "id", batch_size: int = 32,
              workers: int = 1, resume: bool = False, overwrite: bool = False,
              errors_file: str | Path | None = None, progress: bool = True) -> BatchStats:
    """Run ``runner`` over every document of ``input``; see the module docstring."""
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    output = Path(output)
    errors_file = Path(errors_file) if errors_file else errors_path_for(output)
    with claim_files(input, output, errors_file, fmt=fmt, resume=resume, overwrite=overwrite):
        return _run(input, output, errors_file, runner, fmt=fmt, text_field=text_field, id_field=id_field,
                    batch_size=batch_size, workers=workers, resume=resume, progress=progress)


def _run(input: str, output: Path, errors_file: Path, runner: Callable[[Sequence[str]], list[dict]], *, fmt: str,
         text_field: str, id_field: str, batch_size: int, workers: int, resume: bool, progress: bool) -> BatchStats:
    records = read_inputs(input, fmt, text_field, id_field)
    done = {_id_key(v) for v in _read_done(output, "id")} if resume else set()
    done_lines = set(_read_done(errors_file, "line")) if resume else set()
    mode = "a" if resume else "w"
    stats = BatchStats(output=str(output), errors_file=str(errors_file))
    start = time.perf_counter()
    seen: dict[str, int] = {}
    total = count_records(input, fmt) if progress else None
    bar = _progress(progress)

    with open(output, mode, encoding="utf-8") as out, open(errors_file, mode, encoding="utf-8") as errs, \
            ThreadPoolExecutor(workers, thread_name_prefix="hugie-batch") as pool, bar:
        task = bar.add_task(input_label(input), total=total)
        pending: deque[tuple[list[Record], Future]] = deque()

        def write_error(line: int, rid: Any, code: str, reason: str) -> None:
            if line in done_lines:
                return
            rec = {"line": line, "id": rid, "code": code, "error": reason}
            errs.write(json.dumps(rec, ensure_ascii=False) + "\n")
            errs.flush()
            stats.errors += 1

        def drain(keep: int) -> None:
            while len(pending) > keep:
                chunk, fut = pending.popleft()
                lines = []
                for record, result in zip(chunk, fut.result(), strict=True):
                    if isinstance(result, BaseException):
                        write_error(record.line, record.id, *_error_reason(result))
                    else:
                        lines.append(json.dumps({"id": record.id, **result}, ensure_ascii=False) + "\n")
                out.write("".join(lines))
                out.flush()
                stats.written += len(lines)
                bar.advance(task, len(chunk))

        chunk: list[Record] = []
        try:
            for item in records:
                stats.read += 1
                if isinstance(item, BadRecord):
                    write_error(item.line, item.id, item.code, item.reason)
                    bar.advance(task)
                    continue
                key = _id_key(item.id)
                if key in seen:
                    dup = duplicate_error(item, input, seen[key])
                    write_error(dup.line, dup.id, dup.code, dup.reason)
                    bar.advance(task)
                    continue
                seen[key] = item.line
                if key in done:
                    stats.skipped += 1
                    bar.advance(task)
                    continue
                chunk.append(item)
                if len(chunk) >= batch_size:
                    pending.append((chunk, pool.submit(_process, runner, chunk)))
                    chunk = []
                    drain(workers)
            if chunk:
                pending.append((chunk, pool.submit(_process, runner, chunk)))
            drain(0)
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            raise
        finally:
            stats.seconds = time.perf_counter() - start
    return stats
