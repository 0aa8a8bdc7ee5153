"""The dataset registry: a table of the named datasets' loaders, and :func:`load_dataset`, which
resolves a name or a path. The loaders never import this module; the core types they build are in
:mod:`selfsup.data.core` (re-exported here).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import SelfSupError
from . import captions, fashion_mnist, folder, photos, shapes, shards
from .core import (DataInfo, DatasetSplits, ImageSet, cache_dir, label_subset, parse_spec,  # noqa: F401  (re-exported)
                   split_off_test, stratified_split)


# name -> loader(options: dict, data_dir, download, strict) -> DatasetSplits
DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "fashion-mnist": fashion_mnist.load_fashion_mnist,
    "photos": photos.load_photos,
    "shapes": shapes.load_shapes,
}


def register_dataset(name: str):
    def wrap(fn):
        DATASETS[name] = fn
        return fn
    return wrap


def load_dataset(spec: str, data_dir: str | None = None, download: bool = False, strict: bool = False) -> DatasetSplits:
    """Resolve a dataset name (``fashion-mnist``, ``shapes``, with ``:key=value`` options) or a path.

    A path may be a folder of images (class sub-folders give labels, ``train/``/``test/`` give
    splits; ``:stream=true`` reads it lazily), a folder of WebDataset shards
    (:mod:`selfsup.data.shards`) or an image-caption file (``.csv`` / ``.jsonl``,
    :mod:`selfsup.data.captions`). Unknown names and missing paths raise :class:`SelfSupError` naming them.
    """
    name, options = parse_spec(spec)
    if name in DATASETS:
        return DATASETS[name](options=options, data_dir=data_dir, download=download, strict=strict)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir():
            if shards.is_shard_folder(path):
                return shards.load_shards(path, options=options, strict=strict)
            return folder.load_folder(path, options=options, strict=strict)
        if path.suffix.lower() in captions.SUFFIXES:
            return captions.load_captions(path, options=options, strict=strict)
        raise SelfSupError(f"--data {spec}: is a file; expected a folder of images, an image-caption file "
                           f"(.csv, .jsonl) or a dataset name ({', '.join(sorted(DATASETS))})")
    raise SelfSupError(f"--data {spec}: no such dataset or path (known datasets: {', '.join(sorted(DATASETS))})")
