"""``hugie batch``: run one instruction or schema over a file of documents, resumably.

Inputs: ``.jsonl`` (text/id fields), ``.txt`` (one document per line; id = line number),
``.csv`` / ``.tsv`` (text/id columns), ``.parquet`` (text/id columns; id = row number; needs
pyarrow), or ``-`` for stdin; a path may also be an fsspec URL (``s3://…``, ``gs://…``, ``https://…``).
Output: JSONL, one record per input document, ``{"id": ..., "spans": [...]}`` (instruction) or
``{"id": ..., "entities": [...], "relations": [...]}`` (schema), in input order and flushed as it goes.
``hugie batch --engine ray`` runs the same on a Ray cluster (see ``hugie.distributed``).

Records that cannot be processed (invalid JSON, missing or non-string text, duplicate id, an
input the model rejects) go to the errors file with their line number and reason; the run goes on.

``resume=True`` continues after a crash: ids already in the output and lines already in the
errors file are skipped, and a torn last line (the write the crash interrupted) is cut off, so
every input record ends up exactly once in the output or the errors file.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import HugieError
from .types import Schema, validate_schema

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


def _binary_lines(path: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Raw lines (with their end of line) from byte ``start`` to the first line starting at or after ``end``."""
    if path == "-":
        yield from sys.stdin.buffer
        return
    with open_binary(path) as fh:
        if start:
            fh.seek(start)
        pos = start
        for raw in fh:
            if end is not None and pos >= end:
                return
            pos += len(raw)
            yield raw


def _numbered(raws: Iterator[bytes], first_line: int, cursor: Cursor | None) -> Iterator[tuple[int, bytes]]:
    line = first_line - 1
    for raw in raws:
        line += 1
        if cursor is not None:
            cursor.pos += len(raw)
            cursor.line = line
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
    for line, raw in _numbered(_binary_lines(path, start, end), first_line, cursor):
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
    for line, raw in _numbered(_binary_lines(path, start, end), first_line, cursor):
        decoded = _decode(raw, line, name)
        if isinstance(decoded, BadRecord):
            yield decoded
        elif decoded.strip():
            yield Record(line, line, decoded)


_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def _text_lines(raws: Iterator[bytes], cursor: Cursor, end: int | None = None) -> Iterator[str]:
    r"""Lines as ``open(newline="")`` gives them (ends kept; ``\n``, ``\r\n`` or a lone ``\r``), counted,
    up to the first one starting at or after byte ``end``."""
    for raw in raws:
        for piece in (_LONE_CR.split(raw) if b"\r" in raw else (raw,)):
            if end is not None and cursor.pos >= end:
                return
            if piece:
                cursor.pos += len(piece)
                cursor.line += 1
                yield piece.decode("utf-8", errors="surrogateescape")


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
    if not input_exists(path):
        raise HugieError("E024", file=path)
    fmt = detect_format(path, fmt)
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


# ---------------------------------------------------------------------- runners
class LocalRunner:
    """Runs an in-process Extractor."""

    def __init__(self, extractor, instruction: str | None = None, schema: dict | Schema | None = None,
                 threshold: float | None = None, top_k: int | None = None):
        self.extractor, self.instruction, self.schema = extractor, instruction, schema
        self.threshold, self.top_k = threshold, top_k

    def __call__(self, texts: Sequence[str]) -> list[dict]:
        kw = dict(threshold=self.threshold, top_k=self.top_k)
        if self.instruction is not None:
            spans = self.extractor.extract([(self.instruction, t) for t in texts], **kw)
            return [{"spans": [s.model_dump() for s in r]} for r in spans]
        return [self.extractor.extract_schema(t, self.schema, **kw) for t in texts]


class RemoteRunner:
    """Sends the documents to a running ``hugie serve`` through the SDK."""

    def __init__(self, client, instruction: str | None = None, schema: dict | Schema | None = None,
                 threshold: float | None = None, top_k: int | None = None):
        self.client, self.instruction = client, instruction
        self.schema = schema.model_dump() if isinstance(schema, Schema) else schema
        self.threshold, self.top_k = threshold, top_k

    def __call__(self, texts: Sequence[str]) -> list[dict]:
        if self.instruction is not None:
            items = [{"instruction": self.instruction, "text": t} for t in texts]
        else:
            items = [{"schema": self.schema, "text": t} for t in texts]
        out = []
        for r in self.client.extract_batch(items, threshold=self.threshold, top_k=self.top_k):
            out.append({"spans": [s.model_dump() for s in r]} if isinstance(r, list) else r.model_dump())
        return out


def load_schema(path: str | Path, **overrides) -> Schema:
    """A schema file ``{"entities": [...], "relations": [{"subject", "predicate", "object"?}]}``;
    keyword ``overrides`` that are not None (``relation_threshold=0.8``) replace the file's keys."""
    path = Path(path)
    if not path.exists():
        raise HugieError("E024", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HugieError("E020", file=path, line=exc.lineno, reason=exc.msg) from exc
    if not isinstance(data, dict) or not (data.get("entities") or data.get("relations")):
        raise HugieError("E005", keys=sorted(data) if isinstance(data, dict) else type(data).__name__)
    for item in data.get("relations") or []:
        if not isinstance(item, dict) or "subject" not in item or "predicate" not in item:
            raise HugieError("E006", item=item)
    data.update({key: value for key, value in overrides.items() if value is not None})
    return validate_schema(data)


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
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
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
    records = read_inputs(input, fmt, text_field, id_field)  # checks the input exists and its format
    check_output(output, resume, overwrite)
    done = {_id_key(v) for v in _read_done(output, "id")} if resume else set()
    done_lines = set(_read_done(errors_file, "line")) if resume else set()
    output.parent.mkdir(parents=True, exist_ok=True)
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
