"""The data a run used: one answer, with one set of errors, for every command that reads a run."""
from __future__ import annotations

import re
from pathlib import Path

from ..data.datasets import DatasetSplits, load_dataset
from ..errors import SelfSupError
from .folder import run_config


def run_data(run_dir: str | Path | None, data: str | DatasetSplits | None = None, data_dir: str | None = None,
             download: bool = False, default: str | None = None) -> DatasetSplits:
    """``data`` if given, else the dataset the run folder names (its config.json), else ``default``.

    A run trained on in-memory data names no dataset it could reload (``<ImageSet>``): then ``data``
    must be given. ``data_dir`` defaults to the run's own.
    """
    cfg = run_config(run_dir) if run_dir is not None and Path(run_dir).is_dir() else {}
    data = data or cfg.get("data") or default
    if isinstance(data, DatasetSplits):
        return data
    if data is None:
        raise SelfSupError("--data is needed (the run folder does not name its dataset)")
    if data.startswith("<"):
        raise SelfSupError(f"--data is needed (the run was trained on in-memory data, {data})")
    return load_dataset(data, data_dir=data_dir or cfg.get("data_dir") or None, download=download)


def data_spec(run_dir: str | Path | None, data, dataset: DatasetSplits) -> str:
    """The data as the user named it, with its options (``shapes:n=64``): ``data`` when it is a
    spec, else the one the run folder names, else the dataset's own name."""
    if isinstance(data, str):
        return data
    cfg = run_config(run_dir) if data is None and run_dir is not None and Path(run_dir).is_dir() else {}
    own = cfg.get("data")
    return own if own and not own.startswith("<") else dataset.name


def foreign_tag(run_dir: str | Path | None, spec: str) -> str:
    """"" when ``spec`` is the data the run trained on (or the run names none), else a file-name
    tag ``@spec`` that keeps results on other data beside, never over, the run's own."""
    own = run_config(run_dir).get("data") if run_dir is not None and Path(run_dir).is_dir() else None
    if not own or own == spec or own.startswith("<"):
        return ""
    return "@" + re.sub(r"[^A-Za-z0-9._=,-]+", "_", spec.replace(":", "-")).strip("_")[:80]
