"""Where a command writes its results, checked before any work (see :func:`selfsup.atomic.check_writable`)."""
from __future__ import annotations

from pathlib import Path

from ..atomic import check_writable

__all__ = ["check_writable", "check_result_out"]


def check_result_out(out, checkpoint=None, option: str = "--out") -> None:
    """Where an evaluation writes its JSON, checked: ``out`` (a .json file, else a folder), or by
    default the run folder's eval/ (nothing is written for a baseline without ``out``)."""
    if out is not None:
        check_writable(out, option, "file" if str(out).endswith(".json") else "folder")
    elif checkpoint is not None and Path(checkpoint).is_dir():
        check_writable(Path(checkpoint) / "eval", "--checkpoint")
