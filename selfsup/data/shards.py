"""WebDataset tar shards: written by ``selfsup data shard`` and read as streamed splits.

:func:`selfsup.data.shard_writer.write_shards` writes, with the ``webdataset`` library::

    OUT/index.json               format, source, image size, channels, classes, counts, shard names
    OUT/train/shard-000000.tar   per sample KEY.png (or KEY.jpg), KEY.cls (label), KEY.txt (caption)
    OUT/test/shard-000000.tar    when the source has a test split

:func:`load_shards` reads any folder holding ``*.tar`` files, directly or in ``train/`` (and
``test/``), so shards written by other WebDataset tools work too. A sample is the members that
share a key (the member name up to the first dot of its file name): its image is the first member
with an image extension, its label an integer in ``KEY.cls``, its caption ``KEY.txt``. When any
sample has a label (a caption), the set has labels (captions) and samples without one are
skipped. Without ``test/`` a seeded stratified ``test_fraction`` is held out, as for folders.

Each shard is indexed once with Python's ``tarfile``: member offsets, labels and captions, and
each image's header checked (with ``strict``, each image decoded); the index is cached under
``cache_dir() / "shards"``, keyed by the shard's path, size and mtime. Images are then read by
offset when asked for (:class:`~selfsup.data.stream.StreamSet`), in the DataLoader workers during
training. Random access, not webdataset's sequential pipeline, keeps the engine's data order a
function of (seed, epoch), so resuming mid-epoch is exact. Unusable samples (no image, an
unreadable one, an empty caption, a missing or bad label) are skipped with one warning that
counts them and names the first few; ``strict`` fails on the first; a set with none usable is a
one-line error.

Options: ``size`` (default: the image size in index.json, else 32), ``test_fraction`` (0.2),
``seed`` (0), ``cache_mb`` (512: the cap on decoded images held in memory per process).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from ..errors import SelfSupError
from .core import DatasetSplits, cache_dir, split_off_test
from .decode import (IMAGE_EXTENSIONS, OPTIONS as FOLDER_OPTIONS, SHOWN_SKIPS, BadImage, decode_image, parse_options, peek_channels,
                     report_skips)
from .folder import write_cache
from .stream import StreamSet

log = logging.getLogger("selfsup")

FORMAT = "selfsup-shards"  # index.json's "format", what marks a folder written by write_shards
INDEX = "index.json"
PATTERN = "shard-%06d.tar"
INDEX_VERSION = 1  # bump when what a cached shard index holds changes
OPTIONS = {k: FOLDER_OPTIONS[k] for k in ("size", "test_fraction", "seed", "cache_mb")}
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG"}
MEMBER = re.compile(r"^((?:.*/)?[^/.]+)\.([^/]+)$")  # KEY.EXT, as WebDataset groups members into samples


# --------------------------------------------------------------------------------------------
# indexing one shard


def _check(data: bytes, size: int, decode: bool) -> int | str:
    """The channels (1 or 3) the image will decode to, or the reason it is unusable."""
    try:
        return (1 if decode_image(data, size).ndim == 2 else 3) if decode else peek_channels(data)
    except BadImage as e:
        return str(e)


def _index_tar(path: Path, size: int, decode: bool) -> dict:
    """{"samples": [[key, image member, offset, length, channels or reason, label text, caption], ...]
    in member order, "error": why reading stopped early, or None}."""
    samples: dict[str, list] = {}
    error = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                m = MEMBER.match(member.name)
                if m is None or not member.isfile():
                    continue
                key, ext = m.group(1), m.group(2).lower()
                s = samples.setdefault(key, [key, None, 0, 0, "no image", None, None])
                if "." + ext in IMAGE_EXTENSIONS and s[1] is None:
                    s[1:5] = [member.name, member.offset_data, member.size,
                              _check(tar.extractfile(member).read(), size, decode)]
                elif ext == "cls":
                    s[5] = tar.extractfile(member).read().decode("utf-8", "replace").strip()
                elif ext == "txt":
                    s[6] = " ".join(tar.extractfile(member).read().decode("utf-8", "replace").split())
    except (tarfile.TarError, OSError, EOFError) as e:
        error = f"not a readable tar file after {len(samples)} sample(s) ({str(e)[:80] or type(e).__name__})"
    return {"samples": list(samples.values()), "error": error}


def _shard_index(path: Path, size: int, strict: bool) -> dict:
    """:func:`_index_tar`, cached by the shard's path, size and mtime; ``strict`` needs one whose
    images were decoded (at ``size``), any other serves a header check."""
    st = path.stat()
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    what = hashlib.sha256(f"{st.st_size}\0{st.st_mtime_ns}\0{INDEX_VERSION}\0{PIL.__version__}".encode()).hexdigest()[:16]
    folder, stem = cache_dir() / "shards", f"{where}-{what}"
    try:
        index = json.loads((folder / f"{stem}.json").read_text())
        if not strict or index.get("decoded_at") == size:
            return index
    except (OSError, ValueError):  # not cached yet, or a corrupt cache file
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the checks report bombs themselves
        index = {**_index_tar(path, size, decode=strict), "decoded_at": size if strict else None}
    write_cache(folder, stem, {f"{stem}.json": lambda p: Path(p).write_text(json.dumps(index))},
                "the shards will be indexed again next time")
    return index


# --------------------------------------------------------------------------------------------
# reading a folder of shards


def _read_index(path: Path) -> dict | None:
    """The folder's index.json when write_shards wrote it, else None."""
    try:
        index = json.loads((path / INDEX).read_text())
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("format") == FORMAT else None


def is_shard_folder(path: Path) -> bool:
    """A folder written by :func:`write_shards`, or one holding ``*.tar`` files (directly or in ``train/``)."""
    path = Path(path)
    return _read_index(path) is not None or any(path.glob("*.tar")) or any((path / "train").glob("*.tar"))


def _shard_files(path: Path, index: dict | None) -> dict[str, list[Path]]:
    """{split: shard paths}: as index.json lists them, else train/ and test/, else the folder's own."""
    if index is not None:
        splits = {name: [path / name / f for f in s["shards"]] for name, s in index["splits"].items()}
        for f in (f for files in splits.values() for f in files):
            if not f.is_file():
                raise SelfSupError(f"{f}: listed in {path / INDEX} but missing")
    elif any((path / "train").glob("*.tar")):
        splits = {name: sorted((path / name).glob("*.tar")) for name in ("train", "test")}
    else:
        splits = {"train": sorted(path.glob("*.tar"))}
    return {name: files for name, files in splits.items() if files}


def _problem(check, label: str | None, caption: str | None, has_labels: bool, has_captions: bool, classes) -> str | None:
    """Why a sample cannot be used, or None."""
    if isinstance(check, str):
        return check
    if has_captions and not caption:
        return "no caption" if caption is None else "empty caption"
    if has_labels:
        if label is None:
            return "no label"
        try:
            value = int(label)
        except ValueError:
            return f"label {label[:20]!r} is not an integer"
        if value < 0:
            return f"negative label {value}"
        if classes and value >= len(classes):
            return f"label {value} but {INDEX} names {len(classes)} classes"
    return None


def load_shards(path: Path, options: dict, strict: bool = False) -> DatasetSplits:
    """A folder of WebDataset shards as :class:`~selfsup.data.stream.StreamSet` splits (see the module docstring)."""
    path = Path(path).expanduser()
    index = _read_index(path)
    defaults = {**OPTIONS, "size": str(index["image_size"]) if index else OPTIONS["size"]}
    opts = parse_options(dict(options), defaults, what="shards")
    classes = index.get("classes") if index else None
    files, rows, skipped = [], {}, []
    for split, tars in _shard_files(path, index).items():
        rows[split] = []
        for tar in tars:
            shard = _shard_index(tar, opts["size"], strict)
            rel = tar.relative_to(path).as_posix()
            if shard["error"]:
                skipped.append((rel, shard["error"]))
            for key, member, offset, length, check, label, caption in shard["samples"]:
                rows[split].append((len(files), f"{rel}:{member or key}", offset, length, check, label, caption))
            files.append(str(tar))
    if not files:
        raise SelfSupError(f"{path}: no shards (*.tar files) found")
    everything = [r for split_rows in rows.values() for r in split_rows]
    samples = [r for r in everything if r[4] != "no image"]  # a stray README.txt does not make a caption set
    has_labels = any(r[5] is not None for r in samples)
    has_captions = any(r[6] is not None for r in samples)
    usable = {}
    for split, split_rows in rows.items():
        usable[split] = []
        for r in split_rows:
            problem = _problem(*r[4:], has_labels, has_captions, classes)
            if problem is None:
                usable[split].append(r)
            else:
                skipped.append((r[1], problem))
    n_usable = sum(len(u) for u in usable.values())
    if n_usable == 0:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise SelfSupError(f"{path}: none of its {len(everything)} samples is usable{first}")
    report_skips(path, skipped, strict, kind="sample", total=len(everything))
    channels = 1 if all(r[4] == 1 for u in usable.values() for r in u) else 3

    def make(split_rows: list) -> StreamSet:
        return StreamSet(files, np.array([[r[0], r[2], r[3]] for r in split_rows], dtype=np.int64).reshape(-1, 3),
                         [str(path / r[1]) for r in split_rows], opts["size"], channels,
                         labels=torch.tensor([int(r[5]) for r in split_rows]) if has_labels else None, classes=classes,
                         captions=[r[6] for r in split_rows] if has_captions else None,
                         cache_mb=opts["cache_mb"], strict=strict)

    info = {"source": str(path), "shards": len(files), "samples": len(everything), "skipped": len(skipped),
            "skipped_samples": skipped[:SHOWN_SKIPS], "size": opts["size"], "stream": True, "cache_mb": opts["cache_mb"]}
    if not usable.get("train"):
        raise SelfSupError(f"{path}/train: no usable samples")
    train = make(usable["train"])
    if usable.get("test"):
        info["split"] = "shards"
        return DatasetSplits(name=str(path), train=train, test=make(usable["test"]), info=info)
    return split_off_test(str(path), train, opts, info)
