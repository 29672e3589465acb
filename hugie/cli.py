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
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


@app.command()
def extract(
    text: str = typer.Argument(..., help="The text, or '-' to read it from stdin."),
    instruction: Optional[str] = typer.Option(None, "--instruction", "-i", help="e.g. 找到文章中所有【人名】类型的实体？"),
    entities: Optional[str] = typer.Option(None, "--entities", "-e", help="Comma-separated entity types."),
    schema: Optional[Path] = typer.Option(None, "--schema", "-s", help="JSON schema file {entities, relations}."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model dir or hub id (default: embedded)."),
    backend: str = typer.Option("auto", help="auto, torch or onnx."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threshold: Optional[float] = typer.Option(None, help="Score threshold in [0, 1] (default: the model's)."),
    top_k: Optional[int] = typer.Option(None, help="Keep at most this many spans per instruction."),
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
    """Extract spans for an instruction, entity types, or a whole schema; prints JSON."""
    from .batch import load_schema
    from .extractor import Extractor

    try:
        if text == "-":
            text = sys.stdin.read()
        chosen = [x is not None for x in (instruction, entities, schema)]
        if sum(chosen) != 1:
            raise typer.BadParameter("give exactly one of --instruction, --entities, --schema")
        if relation_threshold is not None and schema is None:
            raise typer.BadParameter("--relation-threshold applies to --schema")
        for flag, value in (("--one-type-per-span", one_type_per_span), ("--flat-ner", flat_ner)):
            if value is not None and instruction is not None:
                raise typer.BadParameter(f"{flag} applies to --entities and --schema")
        spec = load_schema(schema, one_type_per_span=one_type_per_span, flat_ner=flat_ner,
                           relation_threshold=relation_threshold) if schema is not None else None  # before the model
        ex = Extractor.load(model, backend=backend, device=device)
        if instruction is not None:
            spans = ex.extract(instruction, text, threshold=threshold, top_k=top_k)
            _out({"spans": [s.model_dump() for s in spans]})
        elif entities is not None:
            types = [t.strip() for t in entities.split(",") if t.strip()]
            result = ex.extract_entities(text, types, threshold=threshold, top_k=top_k,
                                         one_type_per_span=one_type_per_span, flat_ner=flat_ner)
            _out({t: [s.model_dump() for s in spans] for t, spans in result.items()})
        else:
            _out(ex.extract_schema(text, spec, threshold=threshold, top_k=top_k))
    except HugieError as exc:
        _fail(exc)


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
        records = CONVERTERS[format](input, scheme=scheme, join=join) if format == "conll" else CONVERTERS[format](input)
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
) -> None:
    """Train (or resume) a model from a YAML config; checkpoints go to output_dir."""
    logging.getLogger().setLevel(logging.INFO)
    from .training.trainer import train as run_training

    try:
        path = run_training(config, output_dir=output_dir, max_steps=max_steps, time_limit_minutes=time_limit)
        err.print(f"model saved to {path}")
    except HugieError as exc:
        _fail(exc)


@app.command("eval")
def evaluate_cmd(
    data: Path = typer.Argument(..., help="Unified JSONL with gold entities/relations."),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    label_map: Optional[Path] = typer.Option(None, help="Map gold labels to instruction type names."),
    schema: Optional[Path] = typer.Option(None, help="JSON {subject type: [predicates]} (default: from gold)."),
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
        ex = Extractor.load(model, backend=backend, device=device)
        schema_obj = json.loads(schema.read_text(encoding="utf-8")) if schema else None
        result = evaluate(ex, records, schema=schema_obj, threshold=threshold, one_type_per_span=one_type_per_span,
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

    decoding = {k: v for k, v in (("threshold", threshold), ("relation_threshold", relation_threshold)) if v is not None}
    try:
        path = export_model(model, output, quantize=quantize, opset=opset,
                            outlier_ratio=OUTLIER_RATIO if outlier_ratio is None else outlier_ratio, decoding=decoding)
        err.print(f"exported to {path}")
    except HugieError as exc:
        _fail(exc)


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
    max_text_chars: Optional[int] = typer.Option(None, help="HUGIE_MAX_TEXT_CHARS (100000)."),
    max_instruction_chars: Optional[int] = typer.Option(None, help="HUGIE_MAX_INSTRUCTION_CHARS (512)."),
    max_batch_items: Optional[int] = typer.Option(None, help="HUGIE_MAX_BATCH_ITEMS (64)."),
    max_body_bytes: Optional[int] = typer.Option(None, help="HUGIE_MAX_BODY_BYTES (2000000)."),
    timeout: Optional[float] = typer.Option(None, help="Per-request timeout, s (HUGIE_REQUEST_TIMEOUT_S, 60)."),
    cors_origin: Optional[list[str]] = typer.Option(None, help="Allow this origin (repeatable; HUGIE_CORS_ORIGINS)."),
    log_level: Optional[str] = typer.Option(None, help="debug, info, warning (HUGIE_LOG_LEVEL)."),
) -> None:
    """Run the HTTP service (uvicorn). The API key comes from HUGIE_API_KEY only (not argv)."""
    import uvicorn
    from pydantic import ValidationError

    from .api import Settings, create_app

    given = dict(host=host, port=port, model=model, backend=backend, device=device, max_batch=max_batch,
                 max_wait_ms=max_wait_ms, max_queue=max_queue, executor_threads=threads,
                 max_text_chars=max_text_chars, max_instruction_chars=max_instruction_chars,
                 max_batch_items=max_batch_items, max_body_bytes=max_body_bytes, request_timeout_s=timeout,
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
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    url: Optional[str] = typer.Option(None, help="Send to a running `hugie serve` instead of loading a model."),
    api_key: Optional[str] = typer.Option(None, envvar="HUGIE_API_KEY", help="API key for --url."),
    timeout: float = typer.Option(120.0, help="Per-request timeout for --url, s."),
    threshold: Optional[float] = typer.Option(None, help="Score threshold in [0, 1] (default: the model's)."),
    relation_threshold: Optional[float] = typer.Option(
        None, help="With --schema: threshold for relation objects (default: --threshold, else the model's)."),
    one_type_per_span: Optional[bool] = typer.Option(
        None, "--one-type-per-span/--all-types",
        help="With --schema: a span keeps only its best-scoring entity type, or stays under every type that "
             "finds it (default: the schema file's key, else the model's)."),
    flat_ner: Optional[bool] = typer.Option(
        None, "--flat-ner/--no-flat-ner",
        help="With --schema: no two entities overlap (the best-scoring span wins), or overlaps are kept "
             "(default: the schema file's key, else the model's unless --all-types)."),
    top_k: Optional[int] = typer.Option(None, help="Keep at most this many spans per instruction."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    engine: str = typer.Option("local", help="local (this process) or ray (Ray Data actor pool: --workers "
                                             "actors, one Extractor each; GPU actors with --device cuda)."),
    address: Optional[str] = typer.Option(None, help="--engine ray: the Ray cluster to join (e.g. auto, "
                                                     "ray://head:10001; default: start a local Ray)."),
) -> None:
    """Run an instruction or a schema over a file of documents; JSONL out, resumable."""
    from .batch import LocalRunner, RemoteRunner, check_output, load_schema, run_batch

    try:
        if (instruction is None) == (schema is None):
            raise typer.BadParameter("give exactly one of --instruction, --schema")
        if engine not in ("local", "ray"):
            raise typer.BadParameter(f"--engine must be local or ray, got {engine!r}")
        if address and engine != "ray":
            raise typer.BadParameter("--address needs --engine ray")
        if engine == "ray" and url:
            raise typer.BadParameter("--engine ray loads the model in its workers; it does not take --url")
        for flag, value in (("--relation-threshold", relation_threshold), ("--one-type-per-span", one_type_per_span),
                            ("--flat-ner", flat_ner)):
            if value is not None and schema is None:
                raise typer.BadParameter(f"{flag} applies to --schema")
        schema_obj = load_schema(schema, relation_threshold=relation_threshold, one_type_per_span=one_type_per_span,
                                 flat_ner=flat_ner) if schema is not None else None
        check_output(output, resume, overwrite)  # before loading a model
        if engine == "ray":
            from rich.markup import escape

            from .distributed import require_ray, run_batch_ray

            try:
                require_ray()
            except HugieError as exc:  # its message holds `hugie[ray]`: not rich markup
                err.print(f"[bold red]error:[/] {escape(str(exc))}")
                raise typer.Exit(code=2) from None
            stats = run_batch_ray(input, output, instruction=instruction, schema=schema_obj, model=model,
                                  backend=backend, device=device, threshold=threshold, top_k=top_k, fmt=format,
                                  text_field=text_field, id_field=id_field, batch_size=batch_size, workers=workers,
                                  resume=resume, overwrite=overwrite, errors_file=errors, progress=progress,
                                  address=address)
        elif url:
            from .client import Client

            client = Client(url, api_key=api_key, timeout=timeout, batch_size=batch_size)
            runner = RemoteRunner(client, instruction, schema_obj, threshold, top_k)
        else:
            from .extractor import Extractor

            runner = LocalRunner(Extractor.load(model, backend=backend, device=device), instruction, schema_obj,
                                 threshold, top_k)
        if engine == "local":
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
        err.print(f"[bold red]error:[/] {exc}\nrerun with --resume to continue")
        raise typer.Exit(code=2) from None
    msg = (f"wrote {stats.written} records to {stats.output} ({stats.docs_per_second:.1f} docs/s)"
           + (f", skipped {stats.skipped} already done" if stats.skipped else ""))
    err.print(msg)
    if stats.errors:
        plural = "" if stats.errors == 1 else "s"
        err.print(f"[yellow]{stats.errors} record{plural} failed[/]: see {stats.errors_file}")


if __name__ == "__main__":  # pragma: no cover
    app()
