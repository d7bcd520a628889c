"""Benchmarks share docs/benchmarks.md: each one rewrites only its own marked section."""

from __future__ import annotations

import datetime
import re
import shlex
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the benchmark named in it, with the exact command that produced it.\n"


def update_section(name: str, text: str, doc: Path = DOC) -> Path:
    doc.parent.mkdir(parents=True, exist_ok=True)
    current = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- BEGIN {name} -->\n{text.rstrip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    new = pattern.sub(lambda _: block, current) if pattern.search(current) else current.rstrip() + "\n\n" + block + "\n"
    doc.write_text(new)
    return doc


def command_line() -> str:
    """How this benchmark was started, as a reader would type it, and the date it ran: "`python benchmarks/x.py --a 1` (date".
    """
    script = Path(sys.argv[0]).resolve().relative_to(Path(__file__).resolve().parent.parent)
    cmd = " ".join(["python", str(script), *(shlex.quote(x) for x in sys.argv[1:])])
    return f"`{cmd}` ({datetime.date.today().isoformat()}"
