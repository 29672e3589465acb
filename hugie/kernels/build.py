"""Find, or explicitly build, the shared library holding the ``hugie::SpanScore`` onnxruntime custom op.

Loading a model only *finds* a library (:func:`custom_op_library`): it never runs a compiler or a
package manager. Without one the standard-ONNX fallback graph runs (same outputs, slower) and one
log line says how to build it. Building is :func:`build_library` (``hugie kernels build``), run by
hand, at install time or in an image's build stage.

Where :func:`custom_op_library` looks, in order (``HUGIE_DISABLE_CUSTOM_OP=1`` forces the fallback)::

    $HUGIE_SPAN_SCORE_LIB                               a library built elsewhere (e.g. a Docker build stage)
    $HUGIE_CACHE/kernels/<key>/libhugie_span_score.so   default cache ~/.cache/hugie; key: hash of sources, flags

Cache layout, as :func:`build_library` writes it::

    kernels/<key>/libhugie_span_score.so, build.json    the library and what was built (with or without CUDA), how
    kernels/ort-headers/<version>/include/              onnxruntime headers from Debian's libonnxruntime-dev
    kernels/apt/                                        private apt state used to fetch that package
    kernels/.build.lock                                 serialises builds across processes

Headers come from the ``include`` argument, ``$HUGIE_ORT_INCLUDE`` (a directory holding
``onnxruntime_c_api.h``, ``onnxruntime_cxx_api.h`` and ``onnxruntime_lite_custom_op.h``), the cache
or a system include directory; with ``fetch_headers=True`` Debian trixie's ``libonnxruntime-dev``
(MIT) is downloaded with a private apt configuration. The CUDA kernel is compiled in when ``nvcc`` is
found (``HUGIE_CUDA=0`` or ``cuda=False`` skips it); if that fails the CPU-only library is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import HugieError

logger = logging.getLogger("hugie.kernels")

LIBRARY_NAME = "libhugie_span_score.so"
LIBRARY_ENV = "HUGIE_SPAN_SCORE_LIB"
BUILD_HINT = "build it with `hugie kernels build` (or point HUGIE_SPAN_SCORE_LIB at a built library)"
SOURCES = ("span_score.cc", "span_score_cuda.cu", "span_score_cuda.h")
REQUIRED_HEADERS = ("onnxruntime_c_api.h", "onnxruntime_cxx_api.h", "onnxruntime_lite_custom_op.h")
DEBIAN_PACKAGE = "libonnxruntime-dev"
DEBIAN_VERSION = "1.21.0+dfsg-1"
DEBIAN_SUITE = "trixie"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# SASS for these GPUs plus PTX of the newest one (JIT for anything later); $HUGIE_CUDA_ARCHS overrides.
CUDA_ARCHS = ("75", "80", "86", "89", "90")
CXX_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall")
NVCC_FLAGS = ("-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden")
BUILD_TIMEOUT_S = 900
APT_TIMEOUT_S = 300

_KERNEL_DIR = Path(__file__).resolve().parent
_state_lock = threading.Lock()
_resolved: dict[str, str | None] = {}  # "path" -> what custom_op_library() found in this process
_logged: set[str] = set()


class _Unavailable(Exception):
    """The custom op cannot be provided; the message says why."""

    def __init__(self, message: str, level: int = logging.WARNING):
        super().__init__(message)
        self.level = level


def cache_dir() -> Path:
    root = os.environ.get("HUGIE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hugie")
    return Path(root) / "kernels"


def library_key() -> str:
    """Cache key of the library these sources build: their hash, the compiler flags and the machine."""
    h = hashlib.sha256(f"machine={platform.machine()}\n".encode())
    h.update(" ".join(CXX_FLAGS + NVCC_FLAGS).encode())
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (_KERNEL_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def default_library_path() -> Path:
    """Where :func:`build_library` puts the library by default and :func:`custom_op_library` looks for it."""
    return cache_dir() / library_key() / LIBRARY_NAME


# --------------------------------------------------------------------------------------------
# Finding (model load: no compiler, no package manager, no subprocess)


def custom_op_library() -> str | None:
    """Path of an already-built, working SpanScore library, else ``None`` (the fallback graph runs).

    Logs one line per process saying which scorer runs and, without the library, how to build it.
    """
    with _state_lock:
        if "path" in _resolved:
            return _resolved["path"]
        try:
            path = _find()
            message, level = f"SpanScore: using fused custom op {path}", logging.INFO
        except _Unavailable as exc:
            path, message, level = None, f"SpanScore: {exc}; using the standard-ONNX fallback graph", exc.level
        except Exception as exc:  # noqa: BLE001 - never raise: the fallback graph always works
            path, level = None, logging.WARNING
            message = f"SpanScore: custom op lookup failed ({type(exc).__name__}: {exc}); using the fallback graph"
        _resolved["path"] = path
        _log_once(message, level)
        return path


def library_has_cuda(path: str | os.PathLike) -> bool:
    """Whether the library at ``path`` was built with the CUDAExecutionProvider kernel."""
    try:
        info = json.loads((Path(path).parent / "build.json").read_text())
        return bool(info.get("cuda"))
    except (OSError, ValueError):
        return False


def _log_once(message: str, level: int = logging.INFO) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


def _find() -> str:
    if os.environ.get("HUGIE_DISABLE_CUSTOM_OP", "").strip() not in ("", "0"):
        raise _Unavailable("custom op disabled by HUGIE_DISABLE_CUSTOM_OP", logging.INFO)
    env = os.environ.get(LIBRARY_ENV, "").strip()
    if env:
        library = Path(env).expanduser()
        if not library.is_file():
            raise _Unavailable(f"{LIBRARY_ENV}={env} is not a file")
    else:
        library = default_library_path()
        if not library.is_file():
            raise _Unavailable(f"custom op library not built (no {library}); {BUILD_HINT}", logging.INFO)
    _check_works(library)
    return str(library)


def _check_works(library: Path) -> None:
    """Register ``library`` and score one tiny batch with it, so a stale or foreign build is caught at load."""
    import numpy as np
    import onnxruntime

    from .graph import span_scorer_model

    try:
        opts = onnxruntime.SessionOptions()
        opts.register_custom_ops_library(str(library))
        model = span_scorer_model(2, 2, use_custom_op=True)
        session = onnxruntime.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ones = np.ones((1, 1, 2, 2), np.float32)  # B = K = 1, L = D = 2
        feeds = {"q": ones, "k": ones[:, 0], "start_bias": ones[..., 0], "end_bias": ones[..., 0],
                 "span_mask": np.ones((1, 2), np.int64), "threshold": np.array(0.0, np.float32)}
        spans, _ = session.run(None, feeds)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _Unavailable(f"{library} does not work with onnxruntime {onnxruntime.__version__} ({first}); "
                           "rebuild it with `hugie kernels build --force`") from exc
    if spans.shape != (3, 4):  # (0, 0), (0, 1), (1, 1) of slot 0 all score 2 + cos/sin terms > 0
        raise _Unavailable(f"{library} gave {spans.shape[0]} spans where 3 were expected; "
                           "rebuild it with `hugie kernels build --force`")


# --------------------------------------------------------------------------------------------
# Building (explicit: `hugie kernels build`, an install step, a Docker build stage)


def build_library(output: str | os.PathLike | None = None, *, include: str | os.PathLike | None = None,
                  fetch_headers: bool = False, cuda: bool | None = None, force: bool = False) -> Path:
    """Compile the SpanScore library and return its path; a :class:`HugieError` (E050) says why it cannot.

    ``output``: directory for the library and its ``build.json`` (default: the cache slot
    :func:`custom_op_library` looks in; elsewhere, point ``HUGIE_SPAN_SCORE_LIB`` at it).
    ``include``: onnxruntime headers (default: ``$HUGIE_ORT_INCLUDE``, the cache, system include dirs).
    ``fetch_headers``: without local headers, download Debian's libonnxruntime-dev (runs apt-get).
    ``cuda``: ``None`` compiles the CUDA kernel when nvcc is found (``HUGIE_CUDA=0`` skips it),
    ``True`` requires it, ``False`` builds the CPU kernel only.
    ``force``: rebuild even when a working library of these sources is already there.
    """
    try:
        path = _build_library(output, include, fetch_headers, cuda, force)
    except _Unavailable as exc:
        raise HugieError("E050", reason=str(exc)) from exc
    with _state_lock:
        _resolved.clear()  # the next custom_op_library() call looks again
    return path


def _build_library(output, include, fetch_headers: bool, cuda: bool | None, force: bool) -> Path:
    try:
        import onnxruntime
    except Exception as exc:
        raise _Unavailable(f"onnxruntime is not importable: {exc}") from exc
    ort_version = onnxruntime.__version__
    out_dir = Path(output).expanduser() if output is not None else default_library_path().parent
    library = out_dir / LIBRARY_NAME
    cxx = _find_cxx()
    if cxx is None:
        raise _Unavailable("no C++ compiler found (set CXX or install g++)")
    nvcc = None if cuda is False else _find_nvcc(required=cuda is True)
    if cuda is True and nvcc is None:
        raise _Unavailable("cuda=True but nvcc was not found (put it on PATH or set CUDA_HOME)")

    root = cache_dir()
    headers = _find_headers(include, root, fetch_headers)
    _check_api_version(headers, ort_version)
    key = library_key()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(out_dir / ".build.lock"):
        if not force and library.is_file() and _built_info(library).get("key") == key \
                and (cuda is not True or library_has_cuda(library)):
            with contextlib.suppress(_Unavailable):
                _check_works(library)
                logger.info("SpanScore: %s is already built from these sources (force=True rebuilds it)", library)
                return library
        _build(out_dir, headers, cxx, nvcc, ort_version, key, cuda_required=cuda is True)
    _check_works(library)
    logger.info("SpanScore: built %s (%s)", library, "CPU + CUDA" if library_has_cuda(library) else "CPU")
    return library


def _built_info(library: Path) -> dict:
    try:
        return json.loads((library.parent / "build.json").read_text())
    except (OSError, ValueError):
        return {}


def _find_cxx() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _find_nvcc(required: bool = False) -> str | None:
    if not required and os.environ.get("HUGIE_CUDA", "1").strip() == "0":
        return None
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return None


def _check_api_version(include: Path, ort_version: str) -> None:
    """Headers newer than the runtime would request an API table the runtime lacks."""
    text = (include / "onnxruntime_c_api.h").read_text(errors="replace")
    match = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", text)
    runtime = re.match(r"1\.(\d+)", ort_version)
    if match and runtime and int(match.group(1)) > int(runtime.group(1)):
        raise _Unavailable(
            f"onnxruntime headers in {include} are API {match.group(1)} but the runtime is {ort_version}; "
            "use headers no newer than the runtime (HUGIE_ORT_INCLUDE)"
        )


# --------------------------------------------------------------------------------------------
# Compilation


def _build(out_dir: Path, include: Path, cxx: str, nvcc: str | None, ort_version: str, key: str,
           cuda_required: bool = False) -> None:
    info: dict[str, object] = {"key": key, "ort_version": ort_version, "include": str(include), "cxx": cxx,
                               "nvcc": nvcc, "cuda": False}
    with tempfile.TemporaryDirectory(prefix="build-", dir=out_dir) as tmp:
        tmp_dir = Path(tmp)
        target = tmp_dir / LIBRARY_NAME
        cuda_obj = None
        if nvcc is not None:
            try:
                cuda_obj = _compile_cuda(nvcc, cxx, tmp_dir)
                info["cuda_archs"] = os.environ.get("HUGIE_CUDA_ARCHS", ",".join(CUDA_ARCHS))
            except _Unavailable as exc:
                if cuda_required:
                    raise
                info["cuda_error"] = str(exc)
                logger.warning("SpanScore: CUDA kernel not built, CPU-only library instead: %s", exc)
        else:
            info["cuda_error"] = "nvcc not found (or HUGIE_CUDA=0 / cuda=False)"

        cc_obj = tmp_dir / "span_score.o"
        defines = ["-DHUGIE_WITH_CUDA"] if cuda_obj else []
        _run_checked(
            [cxx, *CXX_FLAGS, *defines, f"-I{include}", f"-I{_KERNEL_DIR}", "-c",
             str(_KERNEL_DIR / "span_score.cc"), "-o", str(cc_obj)],
            "compiling span_score.cc",
        )
        if cuda_obj:
            # nvcc links the static CUDA runtime; keep its symbols private to this library.
            link = [nvcc, "-ccbin", cxx, "-shared", "-o", str(target), str(cc_obj), str(cuda_obj),
                    "-Xlinker", "--exclude-libs,ALL", "-Xlinker", "-z,defs"]
        else:
            link = [cxx, "-shared", "-o", str(target), str(cc_obj), "-pthread", "-Wl,-z,defs"]
        _run_checked(link, "linking " + LIBRARY_NAME)
        info["cuda"] = cuda_obj is not None
        (out_dir / "build.json").write_text(json.dumps(info, indent=2))
        os.replace(target, out_dir / LIBRARY_NAME)  # atomic: readers never see a partial file


def _cuda_gencode(nvcc: str) -> list[str]:
    wanted = [a.strip() for a in os.environ.get("HUGIE_CUDA_ARCHS", ",".join(CUDA_ARCHS)).replace(";", ",").split(",")]
    wanted = [a for a in wanted if a.isdigit()]
    try:
        listed = _run([nvcc, "--list-gpu-code"], timeout=60).stdout
        supported = set(re.findall(r"sm_(\d+)", listed))
    except (OSError, subprocess.SubprocessError):
        supported = set()
    archs = [a for a in wanted if not supported or a in supported]
    if not archs:
        raise _Unavailable(f"nvcc supports none of the requested CUDA architectures {wanted}")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def _compile_cuda(nvcc: str, cxx: str, tmp_dir: Path) -> Path:
    obj = tmp_dir / "span_score_cuda.o"
    cmd = [nvcc, "-ccbin", cxx, *NVCC_FLAGS, *_cuda_gencode(nvcc), "-c", str(_KERNEL_DIR / "span_score_cuda.cu"),
           "-o", str(obj)]
    _run_checked(cmd, "compiling span_score_cuda.cu")
    return obj


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LC_ALL": "C"})


def _run_checked(cmd: list[str], what: str, timeout: float = BUILD_TIMEOUT_S, cwd: Path | None = None) -> str:
    try:
        proc = _run(cmd, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _Unavailable(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise _Unavailable(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))
    return proc.stdout


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = BUILD_TIMEOUT_S * 2):
    """Exclusive inter-process lock (flock); other processes wait while one builds."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise _Unavailable(f"timed out waiting for build lock {path}") from None
                time.sleep(0.25)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------------------------
# onnxruntime headers


def _has_headers(path: Path) -> bool:
    return all((path / name).is_file() for name in REQUIRED_HEADERS)


def system_header_dirs() -> list[Path]:
    """Where an installed onnxruntime development package keeps its headers."""
    prefixes = [os.environ.get("CONDA_PREFIX"), sys.prefix, "/usr/local", "/usr"]
    dirs = []
    for prefix in dict.fromkeys(p for p in prefixes if p):
        base = Path(prefix) / "include"
        dirs += [base / "onnxruntime", base / "onnxruntime" / "core" / "session", base]
    return dirs


def _find_headers(include, root: Path, fetch: bool) -> Path:
    """The onnxruntime headers to compile against (see the module docstring for the order)."""
    for name, given in (("include", include), ("HUGIE_ORT_INCLUDE", os.environ.get("HUGIE_ORT_INCLUDE"))):
        if given:
            path = Path(given).expanduser()
            if not _has_headers(path):
                raise _Unavailable(f"{name}={given} lacks one of {', '.join(REQUIRED_HEADERS)}")
            return path
    found = _cached_headers(root) or next((d for d in system_header_dirs() if _has_headers(d)), None)
    if found is not None:
        return found
    if not fetch:
        raise _Unavailable(
            f"no onnxruntime headers found (looked in {root / 'ort-headers'} and "
            f"{', '.join(str(d) for d in system_header_dirs())}); set HUGIE_ORT_INCLUDE, or let the build download "
            f"Debian's {DEBIAN_PACKAGE} (`hugie kernels build --fetch-headers`)"
        )
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / ".build.lock"):
        return _cached_headers(root) or _fetch_debian_headers(root)


def _cached_headers(root: Path) -> Path | None:
    base = root / "ort-headers"
    preferred = base / DEBIAN_VERSION / "include"
    if _has_headers(preferred):
        return preferred
    if base.is_dir():
        for candidate in sorted(base.glob("*/include"), reverse=True):
            if _has_headers(candidate):
                return candidate
    return None


def _debian_source(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str | None]:
    """(URI, Signed-By) of the machine's main Debian archive, from deb822 or one-line sources."""
    entries: list[tuple[str, str | None]] = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
                for uri in fields.get("uris", "").split():
                    entries.append((uri, fields.get("signed-by")))
    legacy = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in legacy:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"\s*deb\s+(\[[^\]]*\]\s+)?(\S+)\s+\S+", line)
            if match:
                opts = match.group(1) or ""
                signed = re.search(r"signed-by=(\S+?)[\s\]]", opts)
                entries.append((match.group(2), signed.group(1) if signed else None))
    for uri, signed_by in entries:
        if re.search(r"/debian/?$", uri) and "security" not in uri:
            return uri, signed_by
    return "http://deb.debian.org/debian", None


def _fetch_debian_headers(root: Path) -> Path:
    """Download and unpack Debian trixie's libonnxruntime-dev with a private apt configuration."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise _Unavailable(f"no onnxruntime headers: set HUGIE_ORT_INCLUDE ({tool} not available to fetch them)")
    uri, signed_by = _debian_source()
    signed_by = signed_by or (DEBIAN_KEYRING if os.path.isfile(DEBIAN_KEYRING) else None)
    if signed_by is None:
        raise _Unavailable(f"no onnxruntime headers: set HUGIE_ORT_INCLUDE (no Debian keyring at {DEBIAN_KEYRING})")

    apt = root / "apt"
    for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial", "deb"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    (apt / "sources.list.d" / f"hugie-{DEBIAN_SUITE}.sources").write_text(
        f"Types: deb\nURIs: {uri}\nSuites: {DEBIAN_SUITE}\nComponents: main\nSigned-By: {signed_by}\n"
    )
    opts: list[str] = []
    for key, value in (
        ("Dir::Etc::SourceList", "/dev/null"),
        ("Dir::Etc::SourceParts", apt / "sources.list.d"),
        ("Dir::Etc::Preferences", "/dev/null"),
        ("Dir::Etc::PreferencesParts", apt / "preferences.d"),
        ("Dir::State::Lists", apt / "lists"),
        ("Dir::State::Status", apt / "status"),
        ("Dir::Cache", apt / "cache"),
        ("Acquire::Languages", "none"),
        ("APT::Sandbox::User", "root" if os.geteuid() == 0 else ""),
    ):
        if value != "":
            opts += ["-o", f"{key}={value}"]

    _run_checked(["apt-get", *opts, "update"], f"apt-get update ({DEBIAN_SUITE})", timeout=APT_TIMEOUT_S)
    if not any((apt / "lists").glob("*_Packages*")):  # apt-get update exits 0 on fetch errors
        raise _Unavailable(f"apt-get update could not fetch the Debian {DEBIAN_SUITE} index from {uri} (offline?)")
    for cmd in ([f"{DEBIAN_PACKAGE}={DEBIAN_VERSION}"], [DEBIAN_PACKAGE]):
        try:
            _run_checked(["apt-get", *opts, "download", *cmd], f"apt-get download {cmd[0]}",
                         timeout=APT_TIMEOUT_S, cwd=apt / "deb")
            break
        except _Unavailable:
            if cmd == [DEBIAN_PACKAGE]:
                raise
    debs = sorted((apt / "deb").glob(f"{DEBIAN_PACKAGE}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise _Unavailable(f"apt-get download produced no {DEBIAN_PACKAGE} .deb")
    deb = debs[-1]
    version = _run_checked(["dpkg-deb", "-f", str(deb), "Version"], "reading .deb version").strip()

    with tempfile.TemporaryDirectory(prefix="extract-", dir=apt) as tmp:
        _run_checked(["dpkg-deb", "-x", str(deb), tmp], f"unpacking {deb.name}")
        src = Path(tmp) / "usr" / "include" / "onnxruntime"
        if not _has_headers(src):
            raise _Unavailable(f"{deb.name} lacks the onnxruntime headers")
        dest = root / "ort-headers" / version
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        shutil.copytree(src, staging / "include")
        copyright_file = Path(tmp) / "usr" / "share" / "doc" / DEBIAN_PACKAGE / "copyright"
        if copyright_file.is_file():
            shutil.copy(copyright_file, staging / "copyright")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    for sub in ("lists", "cache", "deb"):  # the ~20 MB package index is only needed once
        shutil.rmtree(apt / sub, ignore_errors=True)
    logger.info("SpanScore: fetched onnxruntime headers %s from Debian %s into %s", version, DEBIAN_SUITE, dest)
    return dest / "include"
