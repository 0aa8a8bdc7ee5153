"""Decoding one image file by the rules of :mod:`selfsup.data.folder` (EXIF orientation, grey
modes kept grey, transparency on white, a centre square resized to ``size``), the loaders' shared
options, and the one report of skipped files, samples or rows. Folders, shards, caption files and
streamed sets all decode through here."""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import SelfSupError

log = logging.getLogger("selfsup")

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .bmp .dib .gif .tif .tiff .webp .ppm .pgm .pbm .pnm .tga .ico".split()
)
OPTIONS = {"size": "32", "test_fraction": "0.2", "seed": "0", "stream": "false", "cache_mb": "512"}
SHOWN_SKIPS = 5  # how many skipped files the warning names

# --------------------------------------------------------------------------------------------
# options


def _in_range(value, lo, hi, hi_open=False):
    if not lo <= value <= hi or (hi_open and value == hi):
        raise ValueError
    return value


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError
    return value.lower() in ("true", "1", "yes")


# option -> (convert, or raise ValueError; what a valid value is)
OPTION_RULES = {
    "size": (lambda v: _in_range(int(v), 1, 4096), "an integer in [1, 4096]"),
    "test_fraction": (lambda v: _in_range(float(v), 0.0, 1.0, hi_open=True), "a number in [0, 1)"),
    "seed": (lambda v: _in_range(int(v), 0, 2**63 - 1), "an integer >= 0"),
    "stream": (_boolean, "true or false"),
    "cache_mb": (lambda v: _in_range(int(v), 0, 2**30), "a non-negative integer (MiB)"),
}


def parse_options(options: dict, defaults: dict = OPTIONS, what: str = "folder") -> dict:
    """Check and convert image-set options (strings from a spec, or numbers): the keys of ``defaults``
    among size, test_fraction, seed, stream, cache_mb. Errors name ``what`` and the option."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise SelfSupError(f"{what}: unknown option(s) {', '.join(unknown)} (known: {', '.join(defaults)})")
    raw = {**defaults, **{k: str(v) for k, v in options.items()}}
    out = {}
    for key, value in raw.items():
        convert, valid = OPTION_RULES[key]
        try:
            out[key] = convert(value)
        except ValueError:
            raise SelfSupError(f"{what}: option {key}={value!r} must be {valid}") from None
    return out


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


GREY_MODES = ("1", "L", "LA", "La", "I", "F")  # modes that to_l_or_rgb turns into L (and I;16*)


def _open(source: Path | bytes):
    """What Image.open takes: the path, or the bytes of an encoded image (a tar member)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadImage("empty file")
        return io.BytesIO(source)
    if source.is_dir():
        raise BadImage("is a directory")
    if source.stat().st_size == 0:
        raise BadImage("empty file")
    return source


def _check_pixels(im: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS  # Pillow raises above 2x this and only warns above 1x
    if limit is not None and im.width * im.height > limit:
        raise BadImage(f"decompression bomb ({im.width}x{im.height} pixels)")


def _decode(source: Path | bytes, size: int) -> np.ndarray:
    with Image.open(_open(source)) as im:
        _check_pixels(im)
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


@contextlib.contextmanager
def _reasons():
    """Turn whatever a decoder of an untrusted file raises into a :class:`BadImage` with a short reason."""
    try:
        yield
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


def decode_image(source: Path | bytes, size: int) -> np.ndarray:
    """Decode a file (or its bytes) to ``(size, size)`` (grey) or ``(size, size, 3)`` uint8, or raise :class:`BadImage`."""
    with _reasons():
        return _decode(source, size)


def peek_channels(source: Path | bytes) -> int:
    """The channels (1 or 3) :func:`decode_image` will give, from the image's header alone (no
    pixels decoded), or raise :class:`BadImage` for what the header already shows to be unusable."""
    with _reasons(), Image.open(_open(source)) as im:
        _check_pixels(im)
        return 1 if im.mode in GREY_MODES or im.mode.startswith("I;16") else 3


def stack_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """Decoded images -> uint8 (N, 1, H, W) when all are grey, else (N, 3, H, W) with grey ones repeated."""
    if all(a.ndim == 2 for a in arrays):
        images = np.stack(arrays)[:, None]
    else:
        images = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(images))


def report_skips(root: Path, skipped: list, strict: bool, kind: str = "file", total: int | None = None) -> None:
    """One warning counting the skipped ``(name, reason)`` pairs and naming the first few; with
    ``strict``, an error naming the first. ``kind`` names what was skipped (file, sample, row);
    with ``total`` the warning says "N of total"."""
    if not skipped:
        return
    skipped = [(rel.rstrip("/"), reason) for rel, reason in skipped]
    if strict:
        rel, reason = skipped[0]
        raise SelfSupError(f"{root / rel}: {reason} (strict mode; {len(skipped)} bad {kind}(s) in {root})")
    shown = ", ".join(f"{rel}: {reason}" for rel, reason in skipped[:SHOWN_SKIPS])
    more = ", ..." if len(skipped) > SHOWN_SKIPS else ""
    if total is None:
        noun = "image" if len(skipped) == 1 else "images"
        log.warning("skipped %d unreadable %s in %s (%s%s)", len(skipped), noun, root, shown, more)
    else:
        log.warning("skipped %d of %d %ss in %s (%s%s)", len(skipped), total, kind, root, shown, more)
