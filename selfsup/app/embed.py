"""Embeddings of every image of a dataset, written for use outside selfsup (``selfsup embed``).

The features are the evaluation's own (:func:`selfsup.eval.features.extract`): the backbone's
normalisation and input space, eval mode, the pooled embedding or an earlier ``layer``/``pool``.
The format follows the suffix of ``out``:

- ``.npy``: a float32 array (N, D), and beside it ``FILE.json`` with the settings and, under
  ``columns``, one list per column in the array's row order;
- ``.parquet`` (``pip install 'selfsup[parquet]'``): one row per image with the same columns and
  ``embedding`` (a fixed-size list of float32); the settings are in the schema metadata (``selfsup``).

Columns: ``index`` (the image's position in its split), ``split`` (train | test), ``path`` (the
image file, for folders and caption files) and ``label`` (for labelled data; null where unknown).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.datasets import DatasetSplits
from .. import runs
from ..atomic import atomic_write
from ..errors import SelfSupError
from ..eval import features as feat
from ..runs import check_writable, load_backbone
from .device import pick_device

SPLITS = ("train", "test", "all")
SUFFIXES = (".npy", ".parquet")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SelfSupError("writing .parquet needs pyarrow: pip install 'selfsup[parquet]'") from None
    return pyarrow, pyarrow.parquet


def embed(checkpoint: str | Path, data: str | DatasetSplits | None = None, out: str | Path | None = None,
          split: str = "all", layer: int | None = None, pool: str | None = None, batch_size: int = 512,
          device: str = "auto", data_dir: str | None = None) -> dict:
    """Embed every image of ``split`` ("train", "test" or "all": train then test) of ``data``
    (default: the run's training data) with the backbone of ``checkpoint`` (a run folder or its
    ``backbone.safetensors``), and write ``out`` (.npy or .parquet) when given.

    Returns {"embeddings": (N, D) float32 array, "columns": {name: list of N}, "meta": settings}.
    """
    if batch_size <= 0:
        raise SelfSupError(f"--batch-size must be positive, got {batch_size}")
    if split not in SPLITS:
        raise SelfSupError(f"--split {split}: expected one of {', '.join(SPLITS)}")
    if out is not None:
        if Path(out).suffix.lower() not in SUFFIXES:
            raise SelfSupError(f"--out {out}: expected a .npy or .parquet file")
        if Path(out).suffix.lower() == ".parquet":
            _pyarrow()  # before the work, not after it
        check_writable(out, "--out", "file")
    encoder = load_backbone(checkpoint)
    dataset = runs.run_data(checkpoint, data, data_dir=data_dir)
    parts = [(name, getattr(dataset, name)) for name in ("train", "test") if split in (name, "all")]
    parts = [(name, s) for name, s in parts if s is not None]
    if not parts:
        raise SelfSupError(f"--split test: {dataset.name} has no test split")
    if encoder.meta["in_chans"] != parts[0][1].channels:
        raise SelfSupError(f"--data {dataset.name}: has {parts[0][1].channels} channel(s) but the backbone was "
                           f"trained on {encoder.meta['in_chans']}")
    dev = pick_device(device)
    x = torch.cat([feat.extract(encoder, s.images, batch_size, dev, layer=layer, pool=pool) for _, s in parts])
    x = x.numpy().astype(np.float32)
    columns = {"index": [i for _, s in parts for i in range(len(s))],
               "split": [name for name, s in parts for _ in range(len(s))]}
    if any(s.paths is not None for _, s in parts):
        columns["path"] = [p for _, s in parts for p in (s.paths or [None] * len(s))]
    if any(s.labels is not None for _, s in parts):
        columns["label"] = [v for _, s in parts for v in (s.labels.tolist() if s.labels is not None else [None] * len(s))]
    meta = {"checkpoint": str(checkpoint), "backbone": encoder.meta["backbone"], "method": encoder.meta.get("method"),
            "data": dataset.name, "split": split, "layer": layer, "pool": pool, "n": int(x.shape[0]),
            "dim": int(x.shape[1]), "classes": parts[0][1].classes}
    if out is not None:
        _write(x, columns, meta, Path(out))
    return {"embeddings": x, "columns": columns, "meta": meta}


def _write(x: np.ndarray, columns: dict, meta: dict, out: Path) -> None:
    if out.suffix.lower() == ".npy":
        def save(tmp):
            with open(tmp, "wb") as f:  # np.save on a name would add ".npy" to the temporary file's
                np.save(f, x)
        atomic_write(out, save)
        runs.write_json(out.with_suffix(".json"), {**meta, "embeddings": out.name, "columns": columns})
        return
    pa, pq = _pyarrow()
    table = pa.table({**{k: pa.array(v) for k, v in columns.items()},
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])})
    table = table.replace_schema_metadata({"selfsup": json.dumps(meta)})
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
