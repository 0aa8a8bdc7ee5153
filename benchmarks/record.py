"""Write a benchmark's figures into BENCHMARKS.md, in its own section, with the command,
machine and commit that produced them. Each benchmark script calls :func:`record` once; the
section format is ``selfsup bench``'s (:func:`selfsup.app.bench.record_section`)."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from selfsup.app.bench import record_section

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def command_line() -> str:
    script = os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "?"
    return " ".join(["python", shlex.quote(script)] + [shlex.quote(a) for a in sys.argv[1:]])


def record(name: str, title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md with ``body`` (markdown)."""
    record_section(path, name, title, body, command_line())
    print(f"recorded in {path.name} (section {name})")
