"""The data a run used: one answer, with one set of errors, for every command that reads a run."""
from __future__ import annotations

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
