"""A run's pictures (RUN/pictures/NAME.png), drawn so that a person can read them.

A method's ``pictures(batch)`` gives, by name, a :class:`Picture`: images (R * n, C, H, W) in
[0, 1], laid out as R rows of n, and one label per row ("grey input", "prediction", "original").
Each tile is upscaled nearest-neighbour by an integer factor to at least ``MIN_TILE`` px, and the
row labels are written in a left margin. The PNG carries its layout as text chunks ("rows": the
labels as a JSON list, "tile": the tile side in px, "columns"), so tests and tools can read it back.

A plain tensor (the older contract) is still accepted: rows of 8, without labels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["Picture", "as_picture", "render_picture", "save_picture", "picture_layout", "MIN_TILE", "FONT_SIZE",
           "PER_ROW"]

MIN_TILE = 96     # px: the smallest side a tile is shown at
FONT_SIZE = 16    # px: row labels
PER_ROW = 8       # images per row of a plain tensor (no labels)
GAP = 2           # px of white between tiles
MARGIN_PAD = 10   # px of white either side of the labels


class Picture(NamedTuple):
    """Images (len(rows) * n, C, H, W) in [0, 1], as rows of n, top to bottom; ``rows`` labels each row."""
    images: torch.Tensor
    rows: tuple[str, ...]


def as_picture(value) -> Picture:
    """A method's picture value: a :class:`Picture`, an ``(images, rows)`` pair or a plain tensor
    (rows of ``PER_ROW``, no labels). The image count must be a multiple of the row count."""
    if isinstance(value, torch.Tensor):
        return Picture(value, ())
    images, rows = value
    rows = tuple(str(r) for r in rows)
    if rows and len(images) % len(rows):
        raise ValueError(f"{len(images)} images do not make {len(rows)} rows ({', '.join(rows)})")
    return Picture(images, rows)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)   # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:                               # older Pillow: the small bitmap font
        return ImageFont.load_default()


def render_picture(picture, min_tile: int = MIN_TILE, font_size: int = FONT_SIZE):
    """The picture as a PIL image: tiles upscaled (nearest, integer factor) to >= ``min_tile`` px,
    white gaps, and each row's label in a left margin. Returns (image, layout) where layout holds
    "rows", "columns" and "tile" (the tile side in px)."""
    from PIL import Image, ImageDraw
    pic = as_picture(picture)
    x = pic.images.detach().float().cpu().clamp(0, 1)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n_rows = len(pic.rows) if pic.rows else -(-len(x) // PER_ROW)
    cols = len(x) // n_rows if pic.rows else min(PER_ROW, len(x))
    H, W = x.shape[-2:]
    scale = max(1, -(-min_tile // min(H, W)))
    x = F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x
    th, tw = H * scale, W * scale
    font = _font(font_size)
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((draw_probe.textbbox((0, 0), r, font=font)[2] for r in pic.rows), default=0)
    margin = text_w + 2 * MARGIN_PAD if pic.rows else 0
    width = margin + cols * tw + (cols + 1) * GAP
    height = n_rows * th + (n_rows + 1) * GAP
    canvas = Image.new("RGB", (width, height), "white")
    tiles = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas.paste(Image.fromarray(tile), (margin + GAP + c * (tw + GAP), GAP + r * (th + GAP)))
    draw = ImageDraw.Draw(canvas)
    for r, label in enumerate(pic.rows):
        top = GAP + r * (th + GAP)
        box = draw.textbbox((0, 0), label, font=font)
        draw.text((margin - MARGIN_PAD - (box[2] - box[0]), top + (th - (box[3] - box[1])) // 2 - box[1]),
                  label, fill="black", font=font)
    return canvas, {"rows": list(pic.rows), "columns": cols, "tile": th, "margin": margin}


def save_picture(picture, path: str | Path, **kw) -> Path:
    """Render ``picture`` and write it as a PNG whose text chunks record its layout."""
    from PIL.PngImagePlugin import PngInfo
    image, layout = render_picture(picture, **kw)
    info = PngInfo()
    for key, value in layout.items():
        info.add_text(key, json.dumps(value))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)
    return path


def picture_layout(path: str | Path) -> dict:
    """The layout a PNG written by :func:`save_picture` records ({} for any other PNG)."""
    from PIL import Image
    with Image.open(path) as im:
        text = dict(getattr(im, "text", {}) or {})
    out = {}
    for key in ("rows", "columns", "tile", "margin"):
        if key in text:
            out[key] = json.loads(text[key])
    return out
