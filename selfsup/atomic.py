"""Atomic file writes: readers never see a half-written file. The one piece of run-folder I/O the
data layer needs too (dataset caches), so it sits at the bottom, below ``selfsup.runs``. And
:func:`check_writable`: every command that writes a folder or file (``--out``) checks it first
thing, before any work, so a bad path is a one-line error naming it instead of a traceback."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import SelfSupError


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``: readers
    never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def check_writable(path: str | Path, option: str = "--out", kind: str = "folder") -> Path:
    """Check that ``path`` can be written as a ``kind`` ("folder" or "file") and return it.

    Nothing along the way may be a file (for a folder: ``path`` itself neither), and the nearest
    existing folder (``path`` itself when it is one) must accept a new file: a real probe file is
    created and removed there, since permission bits say nothing about /proc, read-only mounts or
    a full quota. Raises :class:`SelfSupError` naming ``option`` and ``path``; creates nothing."""
    if kind not in ("folder", "file"):
        raise ValueError(kind)
    p = Path(path).expanduser()
    where = f"{option} {path}"
    if p.exists():
        if kind == "folder" and not p.is_dir():
            raise SelfSupError(f"{where}: is a file, not a folder")
        if kind == "file" and p.is_dir():
            raise SelfSupError(f"{where}: is a folder, not a file")
    probe_dir = p if kind == "folder" and p.is_dir() else p.parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise SelfSupError(f"{where}: cannot be created, {probe_dir} is not a folder")
    if kind == "file" and p.exists() and not os.access(p, os.W_OK):
        raise SelfSupError(f"{where}: the file is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".selfsup-probe-", dir=probe_dir)
    except OSError as e:
        raise SelfSupError(f"{where}: not writable (cannot create files in {probe_dir}: {e.strerror or e})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    return p

