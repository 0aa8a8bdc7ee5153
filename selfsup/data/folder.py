"""A folder of images as an in-memory dataset.

Layouts (decided from the folder, in this order):

- ``train/`` (and optionally ``test/``) sub-folders give the splits; each may be flat or hold class
  sub-folders, and the class names are the sorted union of both (same index in both splits).
  Without ``test/`` the test split is cut from ``train/`` as below.
- class sub-folders give labels (class names = sorted sub-folder names; images may be nested
  deeper inside a class folder);
- a flat folder of images is unlabeled.

Without ``test/``, a seeded stratified split holds out ``test_fraction`` (default 0.2; 0 = none).

Every image is decoded once with Pillow into a ``size``x``size`` uint8 picture (shorter side
resized to ``size`` with antialiased bilinear filtering, then centre-cropped), with these rules:

- EXIF orientation is applied;
- grey modes stay grey: ``1`` and ``L``; 16-bit (``I;16*``, ``I``) is scaled by 255/65535 with
  rounding (not clipped at 255); float (``F``) is taken as [0, 1] when it lies there, else
  min-max scaled;
- palette images (``P``/``PA``) are expanded to RGB(A); CMYK, YCbCr and other modes go to RGB;
- transparency (RGBA, LA, palette or tRNS transparency) is composited onto **white**;
- if every image is grey the set has C=1, otherwise C=3 (grey images replicated).

Unreadable files (zero bytes, truncated, corrupt, not an image, decompression bombs, directories
named like images) are skipped with one warning on the ``selfsup`` logger, or raise
:class:`SelfSupError` with ``strict=True``. Files without an image extension and hidden files are
ignored silently.

Decoded images are cached under ``cache_dir() / "folders"`` (never in the data folder), keyed by
the folder's absolute path, its image files (relative path, size, mtime) and ``size``. The split
(``test_fraction``, ``seed``) is cut after loading, so changing it does not decode again. Each
split keeps the absolute path of every image it holds (``ImageSet.paths``, for ``selfsup embed``).

``stream=true`` decodes nothing up front, for folders larger than memory: each file's header is
read once (the result cached beside the decodings) to find unreadable files and the channels, and
the splits are :class:`~selfsup.data.stream.StreamSet` s that decode an image when it is asked for
(in the DataLoader workers during training), keeping at most ``cache_mb`` MiB of decoded images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from ..atomic import atomic_write
from ..errors import SelfSupError
from .core import DatasetSplits, ImageSet, cache_dir, split_off_test
from .decode import (IMAGE_EXTENSIONS, OPTIONS, SHOWN_SKIPS, BadImage, decode_image, parse_options,  # noqa: F401
                     peek_channels, report_skips, stack_images)

log = logging.getLogger("selfsup")

CACHE_VERSION = 2  # bump when the decoding rules or the cached fields change
IGNORED_DIRS = {"__MACOSX"}  # resource forks left by macOS zip files


# --------------------------------------------------------------------------------------------
# finding the files


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan(root: Path) -> list[tuple[str, int, int]]:
    """Image-named entries under ``root``: sorted ``(relative posix path, size, mtime_ns)``.

    Directories named like images are listed too (with a trailing ``/``) so they are reported.
    Hidden entries are left out; symlinked folders are followed once.
    """
    entries = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        rel_dir = Path(dirpath).relative_to(root)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") or d in IGNORED_DIRS:
                continue
            if _is_image_name(d):
                entries.append(((rel_dir / d).as_posix() + "/", 0, 0))
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if f.startswith(".") or not _is_image_name(f):
                continue
            try:
                st = os.stat(os.path.join(dirpath, f))
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:  # a dangling symlink: decoding reports it
                stamp = (0, 0)
            entries.append(((rel_dir / f).as_posix(), *stamp))
    return sorted(entries)


def _layout(root: Path, rels: list[str]) -> tuple[str, list[tuple[str, str, str | None]], list[tuple[str, str]]]:
    """Assign each entry a split and class.

    Returns (layout, [(rel, split, class or None)], [(rel, reason)] for entries outside the layout).
    """
    assigned, outside = [], []

    def classify(rel: str, prefix: str, split: str, items: list):
        inner = rel[len(prefix):].rstrip("/")
        parts = inner.split("/")
        items.append((rel, split, parts[0] if len(parts) > 1 else None))

    if (root / "train").is_dir():
        layout = "train-test"
        for rel in rels:
            top = rel.split("/")[0]
            if top in ("train", "test") and "/" in rel.rstrip("/"):
                classify(rel, top + "/", top, assigned)
            else:
                outside.append((rel, "outside train/ and test/"))
    else:
        layout = "flat"
        for rel in rels:
            classify(rel, "", "train", assigned)
    # Per split: class folders if any file sits in a sub-folder; loose files next to them are outside.
    result, labelled = [], {}
    for split in ("train", "test"):
        items = [a for a in assigned if a[1] == split]
        has_classes = any(c is not None and not rel.endswith("/") for rel, _, c in items)
        if any(not rel.endswith("/") for rel, _, _ in items):
            labelled[split] = has_classes
        for rel, s, c in items:
            if has_classes and c is None and not rel.endswith("/"):
                outside.append((rel, "not in a class sub-folder"))
            else:
                result.append((rel, s, c if has_classes else None))
        if has_classes and layout == "flat":
            layout = "classes"
    if len(set(labelled.values())) > 1:
        with_classes = "train" if labelled["train"] else "test"
        without = "test" if with_classes == "train" else "train"
        raise SelfSupError(f"{root}: {with_classes}/ has class sub-folders but {without}/ does not")
    return layout, result, outside


# --------------------------------------------------------------------------------------------
# the cache


def _cache_paths(root: Path, entries: list, size: int) -> tuple[Path, str]:
    """(cache folder, file stem): stem = hash(path, size) + "-" + hash(file list)."""
    where = hashlib.sha256(f"{root}\0{size}\0{CACHE_VERSION}\0{PIL.__version__}".encode()).hexdigest()[:16]
    what = hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
    return cache_dir() / "folders", f"{where}-{what}"


def _read_cache(folder: Path, stem: str) -> tuple[dict, dict] | None:
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / f"{stem}.json").read_text())
        tensors = load_file(folder / f"{stem}.safetensors")
    except Exception:  # missing, corrupt, or written by another version
        return None
    if meta.get("version") != CACHE_VERSION:
        return None
    return tensors, meta


def _write_cache(folder: Path, stem: str, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file
    # tensors first: a JSON without its tensors is never seen
    write_cache(folder, stem, {f"{stem}.safetensors": lambda p: save_file(tensors, p),
                               f"{stem}.json": lambda p: Path(p).write_text(json.dumps(meta))},
                "the folder will be decoded again next time")


def write_cache(folder: Path, stem: str, writers: dict, redo: str) -> None:
    """Write each ``name: writer(tmp_path)`` into the cache ``folder`` atomically and in order, then drop
    the stem's older entries; a failure is only a warning saying what will be ``redo``-ne next time."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, write in writers.items():
            atomic_write(folder / name, write)
        drop_older(folder, stem)
    except OSError as e:
        log.warning("could not write the dataset cache in %s (%s); %s", folder, e, redo)


def drop_older(folder: Path, stem: str) -> None:
    """Remove what the cache holds for older file lists of the same folder at the same size."""
    prefix = stem.split("-")[0] + "-"
    for old in folder.glob(prefix + "*"):
        if not old.name.startswith(stem + ".") and not old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)


def _read_checks(folder: Path, stem: str, n: int, decoded: bool) -> list | None:
    """A streamed folder's cached per-file checks, if they cover ``n`` files (and were decodes when ``decoded``)."""
    try:
        meta = json.loads((folder / f"{stem}.checks.json").read_text())
    except Exception:  # missing, corrupt
        return None
    ok = meta.get("version") == CACHE_VERSION and len(meta.get("checks", ())) == n and (meta.get("decoded") or not decoded)
    return meta["checks"] if ok else None


def _write_checks(folder: Path, stem: str, checks: list, decoded: bool) -> None:
    meta = {"version": CACHE_VERSION, "decoded": decoded, "checks": checks}
    write_cache(folder, stem, {f"{stem}.checks.json": lambda p: Path(p).write_text(json.dumps(meta))},
                "the folder will be checked again next time")


# --------------------------------------------------------------------------------------------
# loading


def _per_file(root: Path, rels: list[str], fn) -> list:
    """``fn(path)`` for each file, in order, on a thread pool; a :class:`BadImage` gives its reason (a str)."""

    def one(rel: str):
        try:
            return fn(root / rel.rstrip("/"))
        except BadImage as e:
            return str(e)

    workers = min(8, os.cpu_count() or 1)
    with warnings.catch_warnings():
        # decode_image checks MAX_IMAGE_PIXELS itself; keep Pillow's warning out of the log
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if workers == 1 or len(rels) < 16:
            return [one(r) for r in rels]
        with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
            return list(pool.map(one, rels))



def _decode_folder(root: Path, entries: list, size: int) -> tuple[dict, dict]:
    """Decode a scanned folder -> (tensors, meta) as stored in the cache."""
    rels = [e[0] for e in entries]
    layout, items, outside = _layout(root, rels)
    skipped = list(outside)
    results = _per_file(root, [rel for rel, _, _ in items], lambda p: decode_image(p, size))
    classes = sorted({c for _, _, c in items if c is not None}) or None
    index = {c: i for i, c in enumerate(classes or [])}
    arrays, labels, in_test, kept = [], [], [], []
    for (rel, split, c), res in zip(items, results):
        if isinstance(res, str):
            skipped.append((rel, res))
            continue
        arrays.append(res)
        kept.append(rel)
        labels.append(index[c] if c is not None else -1)
        in_test.append(split == "test")
    skipped.sort()
    meta = {"version": CACHE_VERSION, "layout": layout, "classes": classes, "skipped": skipped,
            "n_files": len(rels), "paths": kept}
    if not arrays:
        return {}, meta
    tensors = {
        "images": stack_images(arrays),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "in_test": torch.tensor(in_test, dtype=torch.uint8),
    }
    return tensors, meta



def load_folder(path: Path, options: dict, strict: bool = False) -> DatasetSplits:
    """Load a folder of images as uint8 ``(N, C, size, size)`` splits (see the module docstring).

    options: ``size`` (default 32), ``test_fraction`` (0.2; 0 = no test split unless ``test/``
    exists), ``seed`` (0), ``stream`` (false: decode all into memory; true: :func:`stream_folder`)
    and ``cache_mb`` (512, streamed only). ``strict=True`` raises on the first unreadable file
    instead of skipping.
    """
    opts = parse_options(dict(options))
    path = Path(path).expanduser()
    if not path.exists():
        raise SelfSupError(f"{path}: no such folder")
    if not path.is_dir():
        raise SelfSupError(f"{path}: not a folder")
    root = path.resolve()
    entries = scan(root)
    if not entries:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise SelfSupError(f"{path}: no images found (looked for files ending in {exts})")
    if opts["stream"]:
        return stream_folder(path, root, entries, opts, strict)

    folder, stem = _cache_paths(root, entries, opts["size"])
    cached = _read_cache(folder, stem)
    if cached is None:
        tensors, meta = _decode_folder(root, entries, opts["size"])
        if tensors:
            _write_cache(folder, stem, tensors, meta)
    else:
        tensors, meta = cached
    skipped = [tuple(s) for s in meta["skipped"]]
    if not tensors:
        rel, reason = skipped[0]
        raise SelfSupError(f"{path}: none of its {meta['n_files']} image files could be read (first: {rel.rstrip('/')}: {reason})")
    report_skips(path, skipped, strict)

    classes = meta["classes"]
    whole = ImageSet(tensors["images"], tensors["labels"] if classes is not None else None, classes=classes,
                     paths=[str(root / rel) for rel in meta["paths"]])
    info = {"source": str(path), "skipped": len(skipped), "skipped_files": skipped[:SHOWN_SKIPS],
            "layout": meta["layout"], "size": opts["size"], "cache": str(folder / f"{stem}.safetensors")}
    return _splits(path, whole, tensors["in_test"].bool(), meta["layout"], opts, info)


def _splits(path: Path, whole, in_test: torch.Tensor, layout: str, opts: dict, info: dict) -> DatasetSplits:
    """Cut ``whole`` (an ImageSet or StreamSet) into train/test: by the ``train/``/``test/`` folders, or stratified."""
    if layout == "train-test" and bool(in_test.any()):
        train_idx, test_idx = (~in_test).nonzero().flatten(), in_test.nonzero().flatten()
        if len(train_idx) == 0:
            raise SelfSupError(f"{path}/train: no readable images")
        info["split"] = "folders"
        test = whole.subset(test_idx) if len(test_idx) else None
        return DatasetSplits(name=str(path), train=whole.subset(train_idx), test=test, info=info)
    return split_off_test(str(path), whole, opts, info)


def stream_folder(path: Path, root: Path, entries: list, opts: dict, strict: bool) -> DatasetSplits:
    """The scanned folder as :class:`~selfsup.data.stream.StreamSet` splits: nothing is decoded
    up front. Labels come from the layout; each file's header is read once (cached like decodings)
    to find unreadable files and the channels, or, with ``strict``, each file is decoded once."""
    from .stream import StreamSet

    size = opts["size"]
    layout, items, outside = _layout(root, [e[0] for e in entries])
    folder, stem = _cache_paths(root, entries, size)
    checks = _read_checks(folder, stem, len(items), decoded=strict)
    if checks is None:
        check = (lambda p: 1 if decode_image(p, size).ndim == 2 else 3) if strict else peek_channels
        checks = _per_file(root, [rel for rel, _, _ in items], check)
        _write_checks(folder, stem, checks, decoded=strict)
    skipped = sorted(outside + [(rel, c) for (rel, _, _), c in zip(items, checks) if isinstance(c, str)])
    usable = [(rel, split, cls, c) for (rel, split, cls), c in zip(items, checks) if not isinstance(c, str)]
    if not usable:
        rel, reason = skipped[0]
        raise SelfSupError(f"{path}: none of its {len(entries)} image files could be read (first: {rel.rstrip('/')}: {reason})")
    report_skips(path, skipped, strict)

    classes = sorted({cls for _, _, cls in items if cls is not None}) or None
    index = {c: i for i, c in enumerate(classes or [])}
    nbytes = {rel: n for rel, n, _ in entries}
    whole = StreamSet(
        files=[str(root / rel) for rel, _, _, _ in usable],
        where=np.array([[i, 0, nbytes[rel]] for i, (rel, _, _, _) in enumerate(usable)], dtype=np.int64),
        names=[str(path / rel) for rel, _, _, _ in usable],
        size=size, channels=1 if all(c == 1 for *_, c in usable) else 3,
        labels=torch.tensor([index[cls] for _, _, cls, _ in usable]) if classes else None,
        classes=classes, cache_mb=opts["cache_mb"], strict=strict)
    info = {"source": str(path), "skipped": len(skipped), "skipped_files": skipped[:SHOWN_SKIPS], "layout": layout,
            "size": size, "stream": True, "cache_mb": opts["cache_mb"]}
    in_test = torch.tensor([split == "test" for _, split, _, _ in usable])
    return _splits(path, whole, in_test, layout, opts, info)
