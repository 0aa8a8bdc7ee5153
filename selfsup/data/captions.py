"""Image-caption data from a CSV or JSONL file: one row per image, a path and a caption.

``--data pairs.csv`` (or ``.jsonl``) with options ``image=COLUMN`` (default ``image``),
``caption=COLUMN`` (default ``caption``), ``split=COLUMN`` (optional: rows whose value is
``test`` form the test split; otherwise a seeded ``test_fraction``, default 0.2), ``size``
(default 32) and ``seed``. Relative image paths are taken from the file's folder. Rows with a
missing or unreadable image or an empty caption are skipped, counted and the first few named in
one warning; a file with no usable row is a one-line error. Captions are read as UTF-8, with
undecodable bytes replaced (and counted).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from PIL import Image

from ..errors import SelfSupError
from .core import DatasetSplits, ImageSet
from .decode import OPTIONS as FOLDER_OPTIONS
from .decode import SHOWN_SKIPS, BadImage, decode_image, parse_options, stack_images

log = logging.getLogger("selfsup")

IMAGE_OPTIONS = {k: FOLDER_OPTIONS[k] for k in ("size", "test_fraction", "seed")}  # not streamed
OPTIONS = {"image": "image", "caption": "caption", "split": "", **IMAGE_OPTIONS}
SUFFIXES = (".csv", ".jsonl")


def _rows(path: Path) -> tuple[list[dict], int]:
    """The file's rows as dicts, and how many lines had undecodable bytes."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    bad_lines = 0
    for line in raw.split(b"\n"):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines += 1
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        return list(reader), bad_lines
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SelfSupError(f"{path}: line {i} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SelfSupError(f"{path}: line {i} is not a JSON object")
        rows.append(row)
    return rows, bad_lines


def _options(options: dict) -> dict:
    """The column options, then the folder options (size, test_fraction, seed), checked the same way."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SelfSupError(f"captions file: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    columns = {k: str(options.get(k, OPTIONS[k])) for k in ("image", "caption", "split")}
    return {**columns, **parse_options({k: v for k, v in options.items() if k not in columns}, IMAGE_OPTIONS)}


def load_captions(path: Path, options: dict, strict: bool = False) -> DatasetSplits:
    """Load an image-caption file as train/test :class:`ImageSet` splits with ``captions``."""
    o = _options(dict(options))
    path = Path(path).expanduser()
    if not path.is_file():
        raise SelfSupError(f"{path}: no such file")
    rows, bad_text = _rows(path)
    if not rows:
        raise SelfSupError(f"{path}: holds no rows")
    columns = set().union(*(r.keys() for r in rows))
    for opt in ("image", "caption") + (("split",) if o["split"] else ()):
        if o[opt] not in columns:
            raise SelfSupError(f"{path}: no column {o[opt]!r} (option {opt}=; columns: {', '.join(sorted(map(str, columns)))})")
    root = path.parent
    arrays, captions, in_test, skipped, paths = [], [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i, row in enumerate(rows, start=1):
            rel, caption = row.get(o["image"]), row.get(o["caption"])
            name = f"row {i} ({rel})" if rel else f"row {i}"
            if not isinstance(caption, str) or not caption.strip():
                skipped.append((name, "empty caption"))
                continue
            if not isinstance(rel, str) or not rel.strip():
                skipped.append((name, "no image path"))
                continue
            file = (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
            try:
                arrays.append(decode_image(file, o["size"]))
            except BadImage as e:
                skipped.append((name, str(e)))
                continue
            paths.append(str(file))
            captions.append(" ".join(caption.split()))
            in_test.append(bool(o["split"]) and str(row.get(o["split"], "")).strip().lower() == "test")
    if not arrays:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise SelfSupError(f"{path}: none of its {len(rows)} rows is usable{first}")
    if skipped:
        if strict:
            raise SelfSupError(f"{path}: {skipped[0][0]}: {skipped[0][1]} (strict mode; {len(skipped)} bad row(s))")
        shown = ", ".join(f"{n}: {r}" for n, r in skipped[:SHOWN_SKIPS])
        log.warning("skipped %d of %d rows in %s (%s%s)", len(skipped), len(rows), path, shown,
                    ", ..." if len(skipped) > SHOWN_SKIPS else "")
    if bad_text:
        log.warning("%s: %d line(s) were not valid UTF-8; their bad bytes were replaced", path, bad_text)
    images = stack_images(arrays)
    n = len(images)
    test = torch.tensor(in_test)
    if not o["split"] or not test.any():
        g = torch.Generator().manual_seed(o["seed"])
        test = torch.zeros(n, dtype=torch.bool)
        test[torch.randperm(n, generator=g)[: int(round(n * o["test_fraction"]))]] = True
    if test.all():
        raise SelfSupError(f"{path}: every usable row is in the test split; nothing to train on")

    def make(mask: torch.Tensor) -> ImageSet:
        idx = mask.nonzero().flatten()
        return ImageSet(images[idx], None, captions=[captions[j] for j in idx.tolist()], paths=[paths[j] for j in idx.tolist()])

    info = {"source": str(path), "rows": len(rows), "skipped": len(skipped), "skipped_rows": skipped[:SHOWN_SKIPS],
            "size": o["size"]}
    return DatasetSplits(name=str(path), train=make(~test), test=make(test) if test.any() else None, info=info)
