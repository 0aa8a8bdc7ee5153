"""Write a benchmark's figures into BENCHMARKS.md, in its own section, with the command,
machine and commit that produced them. Each benchmark script calls :func:`record` once; the
section format is ``selfsup bench``'s (:func:`selfsup.app.bench.record_section`).

Every script also has ``--smoke``: the same code path on tiny data in seconds (CI runs each one,
tests/test_benchmarks.py), writing everything, its BENCHMARKS.md included, into a scratch folder
(:func:`smoke_dir`) and never into the repository."""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

from selfsup.app.bench import config_hash, record_section

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
# --smoke: tiny data for the scripts that train (class-coloured shapes, 16 px): one batch of each method's
# default 128 per epoch, also with a fifth or two classes held out (clip.py); 10% of it is enough labels to
# fine-tune on (mae.py); small enough that every probe takes a fraction of a second
SMOKE_DATA = "shapes:n=200,n_test=64,size=16"


def cached(path: Path, make, key: dict | None = None) -> dict:
    """The row saved at ``path``, or ``make()``'s, saved there first (units finished by an interrupted
    benchmark are not run again); prints the new row's scalar fields.

    ``key``: everything that decides the row (the resolved training config, the budget, the data's
    fingerprint, the seed). Its hash is saved in the row as ``config_hash``, and a saved row is reused
    only when its hash matches, so a row made under older defaults is made again, not reported as
    today's (the same rule as ``selfsup bench``'s units, less its clean-commit condition: these rows
    are committed and read back by later commits)."""
    h = config_hash(key) if key is not None else None
    if path.exists():
        row = json.loads(path.read_text())
        if h is None or row.get("config_hash") == h:
            return row
        print(f"{path.name}: saved under other settings (config hash {row.get('config_hash')}, now {h}); "
              "running it again", flush=True)
    row = make()
    if h is not None:
        row["config_hash"] = h
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1))
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, (dict, list))}), flush=True)
    return row


def command_line() -> str:
    script = os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "?"
    return " ".join(["python", shlex.quote(script)] + [shlex.quote(a) for a in sys.argv[1:]])


def smoke_dir(out: str | Path | None = None) -> Path:
    """For ``--smoke``: the folder a smoke run writes everything into (``out``, else a new temporary
    folder); :func:`record` then writes that folder's BENCHMARKS.md, not the repository's."""
    global BENCHMARKS_MD
    path = Path(out) if out else Path(tempfile.mkdtemp(prefix="selfsup-smoke-"))
    path.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD = path.resolve() / "BENCHMARKS.md"
    print(f"smoke mode: writing into {path}", flush=True)
    return path


def record(name: str, title: str, body: str, path: Path | None = None) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md with ``body`` (markdown)."""
    path = path or BENCHMARKS_MD
    record_section(path, name, title, body, command_line())
    print(f"recorded in {path.name if path.parent == ROOT else path} (section {name})")
