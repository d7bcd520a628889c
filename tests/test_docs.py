"""The docs guide readers: docs/options.md is what core/options.py declares, no page is a lab notebook of
"Reading ..." entries, the README stays short, and the links between the pages lead somewhere."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _options_doc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("options_doc", ROOT / "scripts" / "options_doc.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_doc_is_what_core_options_declares() -> None:
    doc = _options_doc()
    assert doc.DOC.read_text() == doc.render(), "docs/options.md is stale: run python scripts/options_doc.py"


def test_options_doc_names_every_option() -> None:
    from core.options import OPTIONS

    text = (ROOT / "docs" / "options.md").read_text()
    assert all(f"| `{f.name}` |" in text for f in OPTIONS)


@pytest.mark.parametrize("page", [*DOCS, ROOT / "README.md"], ids=lambda p: p.name)
def test_no_page_is_a_notebook_of_readings(page: Path) -> None:
    """`grep -c "^#* *Reading" docs/*.md` counts 0 in every file: a page states what is true now, and how a figure was
    reached belongs in git history."""
    readings = re.findall(r"^#* *Reading.*$", page.read_text(), re.M)
    assert not readings, readings


def test_readme_is_at_most_250_lines() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, lines


def test_relative_links_lead_to_files() -> None:
    broken = []
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
