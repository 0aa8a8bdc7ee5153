"""Fashion-MNIST (Xiao et al., 2017): 60k/10k 28x28 grey images of 10 clothing classes.

Looked for, in order, in ``--data-dir``, ``$SELFSUP_DATA`` (and a ``fashion-mnist`` sub-folder
of either), the Debian package ``dataset-fashion-mnist`` and the cache folder; downloaded only
when the user asks (``--download``).
"""
from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import SelfSupError
from .core import DatasetSplits, ImageSet, cache_dir

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TRAIN_SIZE = 60000   # images in the train split; option n takes a subset of them
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SelfSupError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise SelfSupError(f"{path}: not a uint8 IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise SelfSupError(f"{path}: truncated IDX file ({len(data) - offset} bytes for shape {dims})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def candidate_dirs(data_dir: str | None) -> list[Path]:
    roots = [Path(p).expanduser() for p in (data_dir, os.environ.get("SELFSUP_DATA")) if p]
    dirs = []
    for root in roots:
        dirs += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return dirs + [DEBIAN_DIR, cache_dir() / "fashion-mnist"]


def locate(data_dir: str | None = None) -> Path | None:
    """The first folder that holds all four IDX files, or None."""
    for d in candidate_dirs(data_dir):
        if all(_find(d, stem) for stem in FILES.values()):
            return d
    return None


def fetch(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        dest = target / (stem + ".gz")
        if dest.exists():
            continue
        tmp = dest.with_suffix(".part")
        try:
            urllib.request.urlretrieve(URL + stem + ".gz", tmp)
        except OSError as e:
            raise SelfSupError(f"downloading Fashion-MNIST from {URL} failed ({e}); "
                               "install the Debian package dataset-fashion-mnist or pass --data-dir") from None
        tmp.replace(dest)
    return target


def load_fashion_mnist(options: dict, data_dir: str | None = None, download: bool = False,
                       strict: bool = False) -> DatasetSplits:
    """Fashion-MNIST's train and test splits; option ``n``: a seeded subset of n train images, n in [1, 60000]."""
    options = dict(options)
    n = options.pop("n", None)
    if options:
        raise SelfSupError(f"fashion-mnist: unknown option(s) {', '.join(options)} (known: n)")
    if n is not None:   # checked before any file is read
        try:
            n = int(str(n).strip())
            if not 1 <= n <= TRAIN_SIZE:
                raise ValueError
        except ValueError:
            raise SelfSupError(f"fashion-mnist: option n={n!r} must be an integer in [1, {TRAIN_SIZE}]") from None
    folder = locate(data_dir)
    if folder is None:
        if not download:
            searched = ", ".join(str(d) for d in candidate_dirs(data_dir))
            raise SelfSupError(f"Fashion-MNIST not found (looked in {searched}); pass --data-dir, "
                               "install the Debian package dataset-fashion-mnist, or add --download")
        folder = fetch(cache_dir() / "fashion-mnist")
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in FILES.items()}
    splits = {}
    for split in ("train", "test"):
        images = torch.from_numpy(arrays[f"{split}_images"].copy()).unsqueeze(1)  # (N, 1, 28, 28)
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        if len(images) != len(labels):
            raise SelfSupError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
        splits[split] = ImageSet(images, labels, classes=list(CLASSES))
    if n is not None:  # a seeded subset of the train split, for quick runs
        g = torch.Generator().manual_seed(0)
        splits["train"] = splits["train"].subset(torch.randperm(len(splits["train"]), generator=g)[:n].sort().values)
    return DatasetSplits("fashion-mnist", splits["train"], splits["test"], info={"source": str(folder)})
