"""The user-facing docs: every relative link resolves (files and #anchors), the generated reference pages match
the code, and the pages keep to their shape (README ≤ 150 lines, model card ≤ 100 with its metadata, no history)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MODEL_CARD = ROOT / "hugie" / "models" / "hugie-small" / "README.md"
PAGES = sorted({ROOT / "README.md", ROOT / "benchmarks" / "README.md", MODEL_CARD, *(ROOT / "docs").glob("*.md")})

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
            continue
        lines.append("" if fenced else re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|!?\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(path: Path):
    for number, line in enumerate(_prose(path.read_text(encoding="utf-8")), 1):
        for match in LINK.finditer(line):
            yield number, match.group(1)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    broken = []
    for number, target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{where} (no heading #{anchor})")
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_links_and_anchors():
    assert ("docs/usage.md" in {t for _, t in _links(ROOT / "README.md")})
    assert _slug("How to fine-tune") == "how-to-fine-tune"
    assert _slug("The `hugie serve` options: 1, 2") == "the-hugie-serve-options-1-2"
    assert "errors" in _anchors(ROOT / "docs" / "usage.md")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "docs" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_settings_page_and_the_error_catalogue_match_the_code():
    """docs/settings.md and the error table of docs/usage.md are generated: regenerate with python docs/gen_docs.py."""
    gen = _generator()
    for path, text in gen.pages().items():
        assert path.read_text(encoding="utf-8") == text, \
            f"{path.relative_to(ROOT)} is out of date: run python docs/gen_docs.py"


def test_the_settings_page_covers_every_setting_variable_and_command():
    from api.settings import Settings

    page = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`HUGIE_{name.upper()}`" in page
    for name in _generator().environment_reads():
        assert f"`{name}`" in page
    for command in ("extract", "batch", "serve", "eval", "export", "train"):
        assert f"### `hugie {command}`" in page


def test_the_pages_keep_their_shape():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    images = re.findall(r"\((docs/images/[^)]+\.png)\)", readme)
    assert images and all((ROOT / p).is_file() for p in images)
    card = MODEL_CARD.read_text(encoding="utf-8")
    assert len(card.splitlines()) <= 100
    meta = yaml.safe_load(card.split("---")[1])
    assert {"license", "language", "tags", "datasets", "metrics"} <= set(meta)
    for heading in ("Model details", "Intended use", "Training data", "Evaluation", "Limitations", "How to fine-tune"):
        assert f"## {heading}" in card


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_development_history_in_user_docs(page):
    text = page.read_text(encoding="utf-8")
    found = re.findall(r"\b(?:session|stage|issue|trial run)\s+\d+", text, flags=re.IGNORECASE)
    assert not found, f"{page.relative_to(ROOT)} tells history: {found}"


def test_the_documented_decoding_defaults_are_the_embedded_models():
    config = json.loads((MODEL_CARD.parent / "config.json").read_text(encoding="utf-8"))
    row = next(line for line in (ROOT / "docs" / "usage.md").read_text(encoding="utf-8").splitlines()
               if line.startswith("| `relation_threshold` |"))
    assert f"({config['relation_threshold']} for the embedded model)" in row
    card = MODEL_CARD.read_text(encoding="utf-8")
    assert f"threshold {config['threshold']};" in card and f"relation objects at {config['relation_threshold']};" in card
