"""The ``hugie`` command (typer + rich): extract, convert, train, eval, export, info."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import HugieError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Instruction-driven information extraction (NER, relations, schemas).")
err = Console(stderr=True, soft_wrap=True)


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(code=2)


def _out(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


@app.callback()
def global_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


@app.command()
def extract(
    text: str = typer.Argument(..., help="The text, or '-' to read it from stdin."),
    instruction: Optional[str] = typer.Option(None, "--instruction", "-i",
                                              help="e.g. 找到文章中所有【人名】类型的实体？"),
    entities: Optional[str] = typer.Option(None, "--entities", "-e", help="Comma-separated entity types."),
    schema: Optional[Path] = typer.Option(None, "--schema", "-s", help="JSON schema file {entities, relations}."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model dir or hub id (default: embedded)."),
    backend: str = typer.Option("auto", help="auto, torch or onnx."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threshold: Optional[float] = typer.Option(None, help="Score threshold in [0, 1] (default: the model's)."),
    top_k: Optional[int] = typer.Option(None, help="Keep at most this many spans per instruction pass."),
    one_type_per_span: Optional[bool] = typer.Option(
        None, "--one-type-per-span/--all-types",
        help="With --entities or --schema: a span keeps only its best-scoring type, or stays under every type "
             "that finds it (default: the schema file's key, else the model's)."),
    flat_ner: Optional[bool] = typer.Option(
        None, "--flat-ner/--no-flat-ner",
        help="With --entities or --schema: no two entities overlap (the best-scoring span wins), or overlaps "
             "are kept (default: the schema file's key, else the model's unless --all-types)."),
    relation_threshold: Optional[float] = typer.Option(
        None, help="With --schema: threshold for relation objects (default: --threshold, else the model's)."),
) -> None:
    """Extract spans for an instruction, entity types, or a whole schema; prints the result as JSON."""
    try:
        if text == "-":
            text = sys.stdin.read()
        task = _task(instruction, entities, schema, threshold=threshold, top_k=top_k,
                     one_type_per_span=one_type_per_span, flat_ner=flat_ner,
                     relation_threshold=relation_threshold)  # checked before the model loads
        from .extractor import Extractor

        ex = Extractor.load(model, backend=backend, device=device)
        _out(ex.run([{**task, "text": text}])[0].model_dump())
    except HugieError as exc:
        _fail(exc)


def _task(instruction: str | None, entities: str | None, schema: Path | None, **options) -> dict:
    """The request fields of ``-i`` / ``-e`` / ``-s`` and the options, validated (catalogued errors)."""
    from .batch import batch_task, load_schema

    if sum(x is not None for x in (instruction, entities, schema)) != 1:
        raise HugieError("E029", details="give exactly one of --instruction, --entities, --schema")
    types = None if entities is None else [t.strip() for t in entities.split(",") if t.strip()]
    spec = load_schema(schema) if schema is not None else None
    if spec is not None:  # a flag given on the command line replaces the schema file's key
        spec = {k: v for k, v in spec.items() if options.get(k) is None}
    return batch_task(instruction=instruction, entities=types, schema=spec, **options)


@app.command()
def convert(
    input: Path = typer.Argument(..., help="Input file."),
    output: Path = typer.Option(..., "--output", "-o", help="Output unified JSONL."),
    format: str = typer.Option(..., "--format", "-f", help="cluener, duie or conll."),
    scheme: str = typer.Option("bio", help="conll tag scheme: bio, bioes or bmes."),
    join: str = typer.Option("auto", help="conll token joining: auto, space or none."),
    label_map: Optional[Path] = typer.Option(None, help="JSON map source label -> type name to apply."),
) -> None:
    """Convert CLUENER json, DuIE SPO lines or CoNLL columns into unified JSONL."""
    from .data import CONVERTERS, apply_label_map, load_label_map, write_jsonl

    try:
        if format not in CONVERTERS:
            raise HugieError("E022", file=input, format=format, choices=", ".join(CONVERTERS))
        if not input.exists():
            raise HugieError("E024", file=input)
        convert_file = CONVERTERS[format]
        records = convert_file(input, scheme=scheme, join=join) if format == "conll" else convert_file(input)
        mapping = load_label_map(label_map)
        n = write_jsonl((apply_label_map(r, mapping) for r in records), output)
        err.print(f"wrote {n} records to {output}")
    except HugieError as exc:
        _fail(exc)


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (YAML)."),
    output_dir: Optional[str] = typer.Option(None, help="Override the config's output_dir."),
    max_steps: Optional[int] = typer.Option(None, help="Override max_steps."),
    time_limit: Optional[float] = typer.Option(None, help="Stop after this many minutes (resumable)."),
    stop_at: Optional[int] = typer.Option(
        None, help="End at this step (resumable); the learning-rate schedule still runs to max_steps."),
) -> None:
    """Train (or resume) a model from a YAML config; checkpoints go to output_dir."""
    logging.getLogger().setLevel(logging.INFO)
    from .training.trainer import train as run_training

    try:
        path = run_training(config, stop_at=stop_at, output_dir=output_dir, max_steps=max_steps,
                            time_limit_minutes=time_limit)
        err.print(f"model saved to {path}")
    except HugieError as exc:
        _fail(exc)


@app.command("eval")
def evaluate_cmd(
    data: Path = typer.Argument(..., help="Unified JSONL with gold entities/relations."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    label_map: Optional[Path] = typer.Option(None, help="Map gold labels to instruction type names."),
    predicates: Optional[Path] = typer.Option(
        None, help="RE: JSON {subject type: [predicates]} to ask (default: the gold's)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N records."),
    backend: str = typer.Option("auto"),
    device: str = typer.Option("auto"),
    threshold: Optional[float] = typer.Option(None),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
    one_type_per_span: Optional[bool] = typer.Option(
        None, "--one-type-per-span/--all-types",
        help="NER: a span keeps only its best-scoring type, or counts under every type (default: the model's)."),
    flat_ner: Optional[bool] = typer.Option(
        None, "--flat-ner/--no-flat-ner",
        help="NER: no two predicted entities overlap (the best-scoring span wins), or overlaps are kept "
             "(default: the model's unless --all-types)."),
    relation_threshold: Optional[float] = typer.Option(
        None, help="RE: threshold for relation objects (default: --threshold, else the model's)."),
) -> None:
    """Strict micro P/R/F1 for NER and RE through the Extractor; JSON on stdout."""
    from .data import apply_label_map, load_label_map, read_jsonl
    from .evaluation import evaluate
    from .extractor import Extractor

    try:
        mapping = load_label_map(label_map)
        records = [apply_label_map(r, mapping) for r in read_jsonl(data)]
        if limit is not None:
            records = records[:limit]
        asked = _read_predicates(predicates) if predicates is not None else None
        ex = Extractor.load(model, backend=backend, device=device)
        result = evaluate(ex, records, predicates=asked, threshold=threshold, one_type_per_span=one_type_per_span,
                          flat_ner=flat_ner, relation_threshold=relation_threshold)
        result.update({"data": str(data), "model": ex.model_path, "backend": ex.backend.name})
        if not as_json:
            for task in ("ner", "re"):
                if task in result:
                    r = result[task]
                    err.print(f"{task}: P {r['precision']:.2f}  R {r['recall']:.2f}  F1 {r['f1']:.2f}  "
                              f"({r['passes_per_second']} passes/s)")
            err.print(f"reachable gold: {result['reachable']} %")
        _out(result)
    except HugieError as exc:
        _fail(exc)


def _read_predicates(path: Path) -> dict[str, list[str]]:
    """``{subject type: [predicates]}`` from a JSON file (E024 / E020 / E026)."""
    if not path.is_file():
        raise HugieError("E024", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HugieError("E020", file=path, line=getattr(exc, "lineno", 0), reason=str(exc)) from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and k.strip() and isinstance(v, list) and v and
                                             all(isinstance(p, str) and p.strip() for p in v) for k, v in data.items()):
        raise HugieError("E026", details=f"{path}: --predicates wants a JSON object of subject type -> [predicates]")
    return data


@app.command()
def export(
    model: str = typer.Argument(..., help="Trained model directory."),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory."),
    quantize: str = typer.Option("none", help="none, int8 (CPU) or fp16 (CUDA)."),
    opset: int = typer.Option(17),
    outlier_ratio: Optional[float] = typer.Option(
        None, min=0.0, help="int8: compute an FFN output projection's input channel in fp32 when it peaks at "
        "this many times the median channel (default 25; 0: quantize every channel)."),
    threshold: Optional[float] = typer.Option(
        None, help="Entity/subject threshold to record as the export's default (default: the trained model's)."),
    relation_threshold: Optional[float] = typer.Option(
        None, help="Relation-object threshold to record as the export's default (default: the trained model's)."),
) -> None:
    """Export to ONNX (encoder + span projection), optimise and optionally quantise."""
    from .export import OUTLIER_RATIO, export_model

    given = (("threshold", threshold), ("relation_threshold", relation_threshold))
    decoding = {k: v for k, v in given if v is not None}
    try:
        path = export_model(model, output, quantize=quantize, opset=opset,
                            outlier_ratio=OUTLIER_RATIO if outlier_ratio is None else outlier_ratio, decoding=decoding)
        err.print(f"exported to {path}")
    except HugieError as exc:
        _fail(exc)


kernels = typer.Typer(no_args_is_help=True, help="The fused SpanScore onnxruntime op (built once, at install time).")
app.add_typer(kernels, name="kernels")


@kernels.command("build")
def kernels_build(
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Directory for the library (default: the cache folder loading looks in; "
                                     "elsewhere, point HUGIE_SPAN_SCORE_LIB at the file)."),
    include: Optional[Path] = typer.Option(
        None, help="onnxruntime C/C++ API headers (default: HUGIE_ORT_INCLUDE, the cache, system include dirs)."),
    fetch_headers: bool = typer.Option(
        False, "--fetch-headers", help="Without local headers, download Debian's libonnxruntime-dev (apt-get)."),
    cuda: Optional[bool] = typer.Option(
        None, "--cuda/--no-cuda", help="Require the CUDA kernel, or build the CPU one only (default: CUDA when "
                                       "nvcc is found)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when an up-to-date library is there."),
) -> None:
    """Compile the SpanScore custom op (C++, and CUDA with nvcc); without it a standard-ONNX graph scores spans."""
    from .kernels.build import build_library

    try:
        path = build_library(output, include=include, fetch_headers=fetch_headers, cuda=cuda, force=force)
    except HugieError as exc:
        _fail(exc)
    err.print(f"built {path}")
    sys.stdout.write(f"{path}\n")


@app.command()
def info(
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    backend: str = typer.Option("auto"),
    device: str = typer.Option("auto"),
) -> None:
    """Versions, model, backend and execution providers."""
    import onnxruntime

    from . import __version__

    out = {"hugie": __version__, "onnxruntime": onnxruntime.__version__,
           "available_providers": onnxruntime.get_available_providers()}
    try:
        from .extractor import Extractor

        out["extractor"] = Extractor.load(model, backend=backend, device=device).info()
    except HugieError as exc:
        out["extractor_error"] = str(exc)
    _out(out)


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Bind address (HUGIE_HOST, default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (HUGIE_PORT, default 8000)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model dir or hub id (HUGIE_MODEL)."),
    backend: Optional[str] = typer.Option(None, help="auto, torch or onnx (HUGIE_BACKEND)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (HUGIE_DEVICE)."),
    max_batch: Optional[int] = typer.Option(None, help="Passes per model call (HUGIE_MAX_BATCH, 32)."),
    max_wait_ms: Optional[float] = typer.Option(None, help="Wait for a batch to fill (HUGIE_MAX_WAIT_MS, 5)."),
    max_queue: Optional[int] = typer.Option(None, help="Queued passes before 503 (HUGIE_MAX_QUEUE, 1024)."),
    threads: Optional[int] = typer.Option(None, help="Model threads (HUGIE_EXECUTOR_THREADS, 1)."),
    fast_lane_chars: Optional[int] = typer.Option(
        None, help="Passes x characters up to which a request takes the fast lane (HUGIE_FAST_LANE_CHARS, 1000; "
                   "0: off)."),
    max_text_chars: Optional[int] = typer.Option(None, help="HUGIE_MAX_TEXT_CHARS (20000)."),
    max_instruction_chars: Optional[int] = typer.Option(None, help="HUGIE_MAX_INSTRUCTION_CHARS (256)."),
    max_entity_types: Optional[int] = typer.Option(None, help="Entity types per request (HUGIE_MAX_ENTITY_TYPES, 64)."),
    max_relations: Optional[int] = typer.Option(None, help="Relations per schema (HUGIE_MAX_RELATIONS, 64)."),
    max_subjects: Optional[int] = typer.Option(None, help="Subjects per relation (HUGIE_MAX_SUBJECTS, 32)."),
    max_spans: Optional[int] = typer.Option(None, help="Spans per answer (HUGIE_MAX_SPANS, 2000)."),
    min_subject_threshold: Optional[float] = typer.Option(
        None, help="Lowest threshold of a schema with relations (HUGIE_MIN_SUBJECT_THRESHOLD, 0.05)."),
    max_pass_chars: Optional[int] = typer.Option(
        None, help="Passes x text characters per request and stage (HUGIE_MAX_PASS_CHARS, 100000)."),
    max_batch_items: Optional[int] = typer.Option(None, help="HUGIE_MAX_BATCH_ITEMS (64)."),
    max_body_bytes: Optional[int] = typer.Option(None, help="HUGIE_MAX_BODY_BYTES (2000000)."),
    timeout: Optional[float] = typer.Option(None, help="Per-request timeout, s (HUGIE_REQUEST_TIMEOUT_S, 60)."),
    cors_origin: Optional[list[str]] = typer.Option(None, help="Allow this origin (repeatable; HUGIE_CORS_ORIGINS)."),
    log_level: Optional[str] = typer.Option(None, help="debug, info, warning (HUGIE_LOG_LEVEL)."),
    ui: Optional[bool] = typer.Option(None, "--ui/--no-ui", help="Serve the demo page at /ui (HUGIE_UI, on)."),
) -> None:
    """Run the HTTP service (uvicorn). The API key comes from HUGIE_API_KEY only (not argv)."""
    import uvicorn
    from pydantic import ValidationError

    from .api import Settings, create_app

    given = dict(host=host, port=port, model=model, backend=backend, device=device, max_batch=max_batch,
                 max_wait_ms=max_wait_ms, max_queue=max_queue, executor_threads=threads,
                 fast_lane_chars=fast_lane_chars,
                 max_text_chars=max_text_chars, max_instruction_chars=max_instruction_chars,
                 max_entity_types=max_entity_types, max_relations=max_relations, max_subjects=max_subjects,
                 max_spans=max_spans, min_subject_threshold=min_subject_threshold, max_pass_chars=max_pass_chars,
                 ui=ui, max_batch_items=max_batch_items, max_body_bytes=max_body_bytes, request_timeout_s=timeout,
                 cors_origins=cors_origin or None, log_level=log_level)
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        _fail(exc)
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr,
                        force=True)
    auth = "on" if settings.api_key else "off"
    err.print(f"hugie serve on http://{settings.host}:{settings.port} (docs at /docs, API key {auth})")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False, timeout_graceful_shutdown=settings.graceful_timeout_s)


@app.command()
def batch(
    input: str = typer.Argument(..., help="A .jsonl, .txt, .csv, .tsv or .parquet file or fsspec URL, or '-' "
                                          "for stdin."),
    output: Path = typer.Option(..., "--output", "-o", help="Output JSONL (one record per input)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", "-i", help="The instruction to ask."),
    entities: Optional[str] = typer.Option(None, "--entities", "-e", help="Comma-separated entity types."),
    schema: Optional[Path] = typer.Option(None, "--schema", "-s", help="JSON schema file {entities, relations}."),
    format: str = typer.Option("auto", "--format", "-f",
                               help="auto (by extension; stdin: jsonl), jsonl, txt, csv, tsv, parquet."),
    text_field: str = typer.Option("text", help="JSONL field / CSV column holding the text."),
    id_field: str = typer.Option("id", help="JSONL field / CSV column holding the id (default: line number)."),
    errors: Optional[Path] = typer.Option(None, help="Errors file (default: OUTPUT stem + .errors.jsonl)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a run: skip ids already in the output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    batch_size: int = typer.Option(32, min=1, help="Documents per model call / request."),
    workers: int = typer.Option(1, min=1, help="Batches in flight at once (--engine ray: actors)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model dir or hub id (default: embedded)."),
    backend: str = typer.Option("auto", help="auto, torch or onnx."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    url: Optional[str] = typer.Option(None, help="Send to a running `hugie serve` instead of loading a model."),
    api_key: Optional[str] = typer.Option(None, envvar="HUGIE_API_KEY", help="API key for --url."),
    timeout: float = typer.Option(120.0, help="Per-request timeout for --url, s."),
    threshold: Optional[float] = typer.Option(None, help="Score threshold in [0, 1] (default: the model's)."),
    relation_threshold: Optional[float] = typer.Option(
        None, help="With --schema: threshold for relation objects (default: --threshold, else the model's)."),
    one_type_per_span: Optional[bool] = typer.Option(
        None, "--one-type-per-span/--all-types",
        help="With --entities or --schema: a span keeps only its best-scoring entity type, or stays under every "
             "type that finds it (default: the schema file's key, else the model's)."),
    flat_ner: Optional[bool] = typer.Option(
        None, "--flat-ner/--no-flat-ner",
        help="With --entities or --schema: no two entities overlap (the best-scoring span wins), or overlaps are "
             "kept (default: the schema file's key, else the model's unless --all-types)."),
    top_k: Optional[int] = typer.Option(None, help="Keep at most this many spans per instruction pass."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    engine: str = typer.Option("local", help="local (this process) or ray (Ray Data actor pool: --workers "
                                             "actors, one Extractor each; GPU actors with --device cuda)."),
    address: Optional[str] = typer.Option(None, help="--engine ray: the Ray cluster to join (e.g. auto, "
                                                     "ray://head:10001; default: start a local Ray)."),
) -> None:
    """Run an instruction, entity types or a schema over a file of documents; JSONL out, resumable."""
    from .batch import LocalRunner, RemoteRunner, claim_files, run_batch

    try:
        task = _task(instruction, entities, schema, threshold=threshold, top_k=top_k,
                     relation_threshold=relation_threshold, one_type_per_span=one_type_per_span, flat_ner=flat_ner)
        if engine not in ("local", "ray"):
            raise typer.BadParameter(f"--engine must be local or ray, got {engine!r}")
        if address and engine != "ray":
            raise typer.BadParameter("--address needs --engine ray")
        if engine == "ray" and url:
            raise typer.BadParameter("--engine ray loads the model in its workers; it does not take --url")
        if engine == "ray":
            from .distributed import require_ray, run_batch_ray

            require_ray()
        client = None
        if url:
            from .client import Client, HugieAPIError

            try:
                client = Client(url, api_key=api_key, timeout=timeout, batch_size=batch_size)
            except HugieAPIError as exc:  # a URL without http:// or https://
                _fail(exc)
        # every file problem is a catalogued error before a model loads; the output stays locked for the run
        with claim_files(input, output, errors, fmt=format, resume=resume, overwrite=overwrite):
            if engine == "ray":
                stats = run_batch_ray(input, output, task=task, model=model, backend=backend, device=device,
                                      fmt=format, text_field=text_field, id_field=id_field, batch_size=batch_size,
                                      workers=workers, resume=resume, overwrite=overwrite, errors_file=errors,
                                      progress=progress, address=address)
            else:
                if client is not None:
                    runner = RemoteRunner(client, task)
                else:
                    from .extractor import Extractor

                    runner = LocalRunner(Extractor.load(model, backend=backend, device=device), task)
                stats = run_batch(input, output, runner, fmt=format, text_field=text_field, id_field=id_field,
                                  batch_size=batch_size, workers=workers, resume=resume, overwrite=overwrite,
                                  errors_file=errors, progress=progress)
    except HugieError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: rerun with --resume to continue")
        raise typer.Exit(code=130) from None
    except Exception as exc:  # the server went away, ...: what was written stays, resumable
        from .client import HugieAPIError

        if not isinstance(exc, HugieAPIError):
            raise
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}\nrerun with --resume to continue")
        raise typer.Exit(code=2) from None
    msg = (f"wrote {stats.written} records to {stats.output} ({stats.docs_per_second:.1f} docs/s)"
           + (f", skipped {stats.skipped} already done" if stats.skipped else ""))
    err.print(msg)
    if stats.errors:
        plural = "" if stats.errors == 1 else "s"
        err.print(f"[yellow]{stats.errors} record{plural} failed[/]: see {stats.errors_file}")


def main() -> None:
    """The ``hugie`` command: ``app``, with a file problem no command checked for (a directory that cannot be
    written, a full disk) reported as one catalogued line instead of a traceback."""
    try:
        app()
    except OSError as exc:
        from rich.markup import escape

        message = HugieError("E039", file=exc.filename or "a file", reason=exc.strerror or exc).message
        err.print(f"[bold red]error:[/] {escape(f'[E039] {message}')}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
