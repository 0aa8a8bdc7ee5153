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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import SelfSupError
from .datasets import DatasetSplits, ImageSet, cache_dir, stratified_split

log = logging.getLogger("selfsup")

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .bmp .dib .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
)
OPTIONS = {"size": "32", "test_fraction": "0.2", "seed": "0"}
CACHE_VERSION = 2  # bump when the decoding rules or the cached fields change
IGNORED_DIRS = {"__MACOSX"}  # resource forks left by macOS zip files
SHOWN_SKIPS = 5  # how many skipped files the warning names


# --------------------------------------------------------------------------------------------
# options


def parse_options(options: dict) -> dict:
    """Check and convert the folder options (strings from a spec, or numbers) -> size, test_fraction, seed."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SelfSupError(f"folder: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    raw = {**OPTIONS, **{k: str(v) for k, v in options.items()}}
    try:
        size = int(raw["size"])
        if not 1 <= size <= 4096:
            raise ValueError
    except ValueError:
        raise SelfSupError(f"folder: option size={raw['size']!r} must be an integer in [1, 4096]") from None
    try:
        test_fraction = float(raw["test_fraction"])
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError
    except ValueError:
        raise SelfSupError(f"folder: option test_fraction={raw['test_fraction']!r} must be a number in [0, 1)") from None
    try:
        seed = int(raw["seed"])
    except ValueError:
        raise SelfSupError(f"folder: option seed={raw['seed']!r} must be an integer") from None
    return {"size": size, "test_fraction": test_fraction, "seed": seed}


# --------------------------------------------------------------------------------------------
# decoding one file


class BadImage(Exception):
    """A file that cannot be used; the message is the short reason shown to the user."""


def _composite_on_white(arr: np.ndarray) -> np.ndarray:
    """(H, W, C+1) uint8 with alpha last -> (H, W, C) uint8 composited onto white."""
    alpha = arr[..., -1:].astype(np.float32) / 255.0
    out = arr[..., :-1].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_l_or_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to ``L`` (grey) or ``RGB`` by the rules in the module docstring."""
    mode = im.mode
    has_key = "transparency" in im.info  # tRNS colour key on L/RGB/P images
    if mode in ("L", "RGB") and not has_key:
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "I" or mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64)  # uint16 (any byte order) or int32
        a = np.clip(a, 0, 65535) * (255.0 / 65535.0)
        return Image.fromarray(np.rint(a).astype(np.uint8), "L")
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.rint(a * 255.0).astype(np.uint8), "L")
    if mode in ("L", "LA", "La"):  # grey with alpha (or an L colour key)
        a = np.asarray(im.convert("LA"))
        return Image.fromarray(_composite_on_white(a)[..., 0], "L")
    if mode in ("P", "PA", "RGB", "RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA"))
        return Image.fromarray(_composite_on_white(a), "RGB")
    try:  # CMYK, YCbCr, RGBX, HSV, ...
        return im.convert("RGB")
    except (ValueError, OSError):
        raise BadImage(f"unsupported mode {mode}") from None


def _decode(path: Path, size: int) -> np.ndarray:
    if path.is_dir():
        raise BadImage("is a directory")
    if path.stat().st_size == 0:
        raise BadImage("empty file")
    with Image.open(path) as im:
        limit = Image.MAX_IMAGE_PIXELS  # Pillow raises above 2x this and only warns above 1x
        if limit is not None and im.width * im.height > limit:
            raise BadImage(f"decompression bomb ({im.width}x{im.height} pixels)")
        if im.format == "JPEG":
            im.draft(None, (size, size))  # DCT-domain downscale, still >= size on each side
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a malformed EXIF block: keep the pixels as stored
            pass
        im = to_l_or_rgb(im)
        w, h = im.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)  # centre square, in float pixels
        im = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
        return np.asarray(im)


def decode_image(path: Path, size: int) -> np.ndarray:
    """Decode one file to ``(size, size)`` (grey) or ``(size, size, 3)`` uint8, or raise :class:`BadImage`."""
    try:
        return _decode(path, size)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage("decompression bomb") from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except FileNotFoundError:
        raise BadImage("file not found (a broken link?)") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except Exception as e:  # decoders of untrusted files raise many kinds of errors
        msg = str(e)
        if "truncated" in msg.lower():
            raise BadImage("truncated") from None
        raise BadImage(f"corrupt ({type(e).__name__}: {msg[:80]})" if msg else f"corrupt ({type(e).__name__})") from None


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


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_cache(folder: Path, stem: str, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    try:
        folder.mkdir(parents=True, exist_ok=True)
        # tensors first: a JSON without its tensors is never seen
        _atomic_write(folder / f"{stem}.safetensors", lambda p: save_file(tensors, p))
        _atomic_write(folder / f"{stem}.json", lambda p: Path(p).write_text(json.dumps(meta)))
        prefix = stem.split("-")[0] + "-"
        for old in folder.glob(prefix + "*"):  # older decodings of the same folder at the same size
            if not old.name.startswith(stem + ".") and not old.name.endswith(".tmp"):
                old.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not write the dataset cache in %s (%s); the folder will be decoded again next time", folder, e)


# --------------------------------------------------------------------------------------------
# loading


def _decode_all(root: Path, rels: list[str], size: int) -> list[np.ndarray | str]:
    """Decode files in order; each result is an array or the reason the file was skipped."""

    def one(rel: str):
        try:
            return decode_image(root / rel.rstrip("/"), size)
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


def stack_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """Decoded images -> uint8 (N, 1, H, W) when all are grey, else (N, 3, H, W) with grey ones repeated."""
    if all(a.ndim == 2 for a in arrays):
        images = np.stack(arrays)[:, None]
    else:
        images = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(images))


def _decode_folder(root: Path, entries: list, size: int) -> tuple[dict, dict]:
    """Decode a scanned folder -> (tensors, meta) as stored in the cache."""
    rels = [e[0] for e in entries]
    layout, items, outside = _layout(root, rels)
    skipped = list(outside)
    results = _decode_all(root, [rel for rel, _, _ in items], size)
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


def _report_skips(root: Path, skipped: list, strict: bool) -> None:
    if not skipped:
        return
    skipped = [(rel.rstrip("/"), reason) for rel, reason in skipped]
    if strict:
        rel, reason = skipped[0]
        raise SelfSupError(f"{root / rel}: {reason} (strict mode; {len(skipped)} bad file(s) in {root})")
    shown = ", ".join(f"{rel}: {reason}" for rel, reason in skipped[:SHOWN_SKIPS])
    more = ", ..." if len(skipped) > SHOWN_SKIPS else ""
    noun = "image" if len(skipped) == 1 else "images"
    log.warning("skipped %d unreadable %s in %s (%s%s)", len(skipped), noun, root, shown, more)


def load_folder(path: Path, options: dict, strict: bool = False) -> DatasetSplits:
    """Load a folder of images as uint8 ``(N, C, size, size)`` splits (see the module docstring).

    options: ``size`` (default 32), ``test_fraction`` (0.2; 0 = no test split unless ``test/``
    exists), ``seed`` (0). ``strict=True`` raises on the first unreadable file instead of skipping.
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
    _report_skips(path, skipped, strict)

    images, in_test = tensors["images"], tensors["in_test"].bool()
    classes = meta["classes"]
    labels = tensors["labels"] if classes is not None else None
    paths = [str(root / rel) for rel in meta["paths"]]
    info = {"source": str(path), "skipped": len(skipped), "skipped_files": skipped[:SHOWN_SKIPS],
            "layout": meta["layout"], "size": opts["size"], "cache": str(folder / f"{stem}.safetensors")}

    def make(idx: torch.Tensor) -> ImageSet:
        return ImageSet(images[idx], None if labels is None else labels[idx],
                        classes=None if classes is None else list(classes), paths=[paths[i] for i in idx.tolist()])

    if meta["layout"] == "train-test" and bool(in_test.any()):
        train_idx, test_idx = (~in_test).nonzero().flatten(), in_test.nonzero().flatten()
        if len(train_idx) == 0:
            raise SelfSupError(f"{path}/train: no readable images")
        info["split"] = "folders"
    else:
        train_idx, test_idx = stratified_split(labels, len(images), opts["test_fraction"], opts["seed"])
        info.update(split="stratified", test_fraction=opts["test_fraction"], seed=opts["seed"])
    test = make(test_idx) if len(test_idx) else None
    return DatasetSplits(name=str(path), train=make(train_idx), test=test, info=info)
