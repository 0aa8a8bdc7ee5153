"""``shapes``: a deterministic synthetic colour dataset with labels, masks and captions.

Each image shows one object of one of ten classes (arrow, house, tree, ...) on a textured
background, with a caption such as ``"a small red arrow at the top left"``. It is generated
from a seed in a second or two, so tests and CPU benchmarks need no download, and it is built
so that every pretext task in the library has something real to learn:

- rotation: every class has a canonical "up" and none is rotation-symmetric or a 90-degree
  rotation of another (``tests/test_shapes.py`` checks this on :func:`canonical_masks`);
- colorization: in ``colors="class"`` mode each class has its own colour (with small random
  variation), so predicting colour from grey means recognising the object;
- CLIP / zero-shot: in ``colors="free"`` mode the colour is drawn independently of the class
  from :data:`COLORS`, so unseen object-colour combinations can be tested; captions name the
  size, colour, class and position;
- kNN / linear probes: backgrounds (stripes, checkers, gradients, waves in muted colours) are
  drawn independently of the class, so a model cannot classify from background.

How it is drawn. Each class is an implicit function ``f(u, v) -> bool`` of object coordinates
(``v`` points up, the shape fills about ``[-1, 1]^2``). Once per process, each shape is
rendered finely to find its centroid and bounding radius, so that an object can be placed by
its centroid (the position word then agrees with the mask centroid) and scaled by its bounding
circle (a rotated object never leaves the image). All random parameters are drawn up front from
one ``torch.Generator``; then, per class (and batch of similar radii), one stack of coordinate
grids over a window around each object is rotated, scaled, evaluated at 2x supersampling,
average-pooled into a coverage map and scattered into the image, where the coverage blends the
object colour over the background. There is no Python loop over pixels or images.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import SelfSupError
from .core import DatasetSplits, ImageSet

CLASSES = ["arrow", "house", "tree", "mushroom", "umbrella", "person", "key", "cup", "letter T", "letter L"]

# Named object colours (saturated, so they stand out from the muted backgrounds). In "class"
# mode class i is drawn in COLORS[i].
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 180, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 80, 230),
    "purple": (140, 60, 200),
    "pink": (240, 110, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = ["small", "medium", "large"]
# Radius of the object's bounding circle, as a fraction of the image side, per size word.
SIZE_RANGES = [(0.19, 0.23), (0.27, 0.31), (0.35, 0.40)]
# Caption phrase for (row, column) of the 3x3 grid of positions.
POSITIONS = [
    ["at the top left", "at the top", "at the top right"],
    ["on the left", "in the center", "on the right"],
    ["at the bottom left", "at the bottom", "at the bottom right"],
]
COLOR_MODES = ("class", "free")
MAX_ROTATION = math.radians(12)  # small random tilt; "up" stays unambiguous
SUPERSAMPLE = 2
CHUNK = 2048  # images composed at once (bounds memory at about 100 MB for 32x32)
COVER_CHUNK = 512  # objects rasterised at once


# --- implicit shapes: (u, v) broadcastable float tensors -> bool mask, v pointing up ------------

def _box(u, v, u0, u1, v0, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _disc(u, v, cu, cv, rad):
    return (u - cu) ** 2 + (v - cv) ** 2 <= rad * rad


def _ring(u, v, cu, cv, r0, r1):
    d2 = (u - cu) ** 2 + (v - cv) ** 2
    return (d2 >= r0 * r0) & (d2 <= r1 * r1)


def _triangle(u, v, v0, v1, half_base):
    """Upright isosceles triangle: base of half-width ``half_base`` at ``v0``, apex at (0, v1)."""
    return (v >= v0) & (v <= v1) & (u.abs() <= half_base * (v1 - v) / (v1 - v0))


def _segment(u, v, a, b, half_width):
    """Thick line from point a to point b with round ends."""
    du, dv = b[0] - a[0], b[1] - a[1]
    t = (((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv)).clamp(0, 1)
    return (u - a[0] - t * du) ** 2 + (v - a[1] - t * dv) ** 2 <= half_width * half_width


def _arrow(u, v):
    return _box(u, v, -0.22, 0.22, -1, 0.02) | _triangle(u, v, 0.0, 1.0, 0.8)


def _house(u, v):
    body = _box(u, v, -0.65, 0.65, -1, 0.12) & ~_box(u, v, -0.18, 0.18, -1.1, -0.4)  # with a door
    return body | _triangle(u, v, 0.1, 1.0, 0.95)


def _tree(u, v):  # a two-tier pine on a trunk
    return _box(u, v, -0.15, 0.15, -1, -0.55) | _triangle(u, v, -0.6, 0.35, 0.9) | _triangle(u, v, -0.1, 1.0, 0.7)


def _mushroom(u, v):  # wide dome cap on a thick stem
    cap = (v >= -0.05) & (u * u + ((v + 0.05) / 0.85) ** 2 <= 1)
    return cap | _box(u, v, -0.28, 0.28, -1, 0)


def _umbrella(u, v):  # scalloped canopy, thin handle ending in a hook
    canopy = (v >= 0.1) & (u * u + ((v - 0.1) / 0.85) ** 2 <= 1)
    for cu in (-0.67, 0.0, 0.67):
        canopy = canopy & ~_disc(u, v, cu, 0.02, 0.3)
    handle = _box(u, v, -0.08, 0.08, -0.75, 0.3)
    hook = _ring(u, v, 0.25, -0.75, 0.17, 0.33) & (v <= -0.75)
    return canopy | handle | hook


def _person(u, v):  # stick figure
    limbs = (_segment(u, v, (0.0, 0.45), (0.0, -0.3), 0.13)
             | _segment(u, v, (0.0, 0.3), (-0.7, -0.15), 0.11) | _segment(u, v, (0.0, 0.3), (0.7, -0.15), 0.11)
             | _segment(u, v, (0.0, -0.3), (-0.5, -0.95), 0.12) | _segment(u, v, (0.0, -0.3), (0.5, -0.95), 0.12))
    return limbs | _disc(u, v, 0.0, 0.72, 0.26)


def _key(u, v):  # bow at the top, teeth on the right at the bottom
    return (_ring(u, v, 0.0, 0.58, 0.18, 0.4) | _box(u, v, -0.11, 0.11, -1, 0.22)
            | _box(u, v, 0.1, 0.45, -1, -0.82) | _box(u, v, 0.1, 0.38, -0.65, -0.48))


def _cup(u, v):  # tapered mug with a handle on the right, on a saucer
    body = (v >= -0.8) & (v <= 0.55) & ((u + 0.2).abs() <= 0.42 + 0.13 * (v + 0.8) / 1.35)
    handle = _ring(u, v, 0.3, -0.05, 0.2, 0.4) & (u >= 0.2)
    return body | handle | _box(u, v, -0.95, 0.55, -1, -0.82)


def _letter_t(u, v):
    return _box(u, v, -0.95, 0.95, 0.5, 1) | _box(u, v, -0.22, 0.22, -1, 0.5)


def _letter_l(u, v):
    return _box(u, v, -0.8, -0.32, -1, 1) | _box(u, v, -0.8, 0.8, -1, -0.52)


_SHAPES = [_arrow, _house, _tree, _mushroom, _umbrella, _person, _key, _cup, _letter_t, _letter_l]
assert len(_SHAPES) == len(CLASSES) == len(COLORS)


@lru_cache(maxsize=None)
def _frames() -> tuple[torch.Tensor, torch.Tensor]:
    """Per class: the centroid (C, 2) of its shape in (u, v) and its radius (C,) about the centroid."""
    g = torch.linspace(-1.6, 1.6, 321)
    v, u = torch.meshgrid(g.flip(0), g, indexing="ij")
    step = float(g[1] - g[0])
    centres, radii = [], []
    for f in _SHAPES:
        m = f(u, v)
        cu, cv = u[m].mean(), v[m].mean()
        centres.append(torch.stack([cu, cv]))
        radii.append(((u[m] - cu) ** 2 + (v[m] - cv) ** 2).sqrt().max() + step)
    return torch.stack(centres), torch.stack(radii)


def _coverage(labels, cx, cy, radius, angle, size: int) -> torch.Tensor:
    """Fraction of each pixel covered by its object: (n, size, size) float in [0, 1].

    labels, cx, cy, radius, angle: (n,). (cx, cy) is where the shape's centroid lands, in pixels
    (x right, y down); radius is the pixel radius of its bounding circle; angle tilts it.
    The shape is evaluated only in a square window around its bounding circle (images of a class
    are sorted by radius, so each batch shares a window size), then scattered into the image.
    """
    centres, radii = _frames()
    out = torch.zeros(len(labels), size * size)
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[radius[idx].argsort()]
        for part in idx.split(COVER_CHUNK):
            m = len(part)
            win = min(size, math.ceil(2 * float(radius[part].max())) + 2)  # window side, pixels
            ox = (cx[part] - win / 2).round().clamp(0, size - win).long()  # (m,) window corner
            oy = (cy[part] - win / 2).round().clamp(0, size - win).long()
            s = win * SUPERSAMPLE
            grid = (torch.arange(s, dtype=torch.float32) + 0.5) / SUPERSAMPLE
            dx = (ox - cx[part]).view(m, 1, 1) + grid.view(1, 1, s)  # (m, 1, s)
            dy = (cy[part] - oy).view(m, 1, 1) - grid.view(1, s, 1)  # (m, s, 1), up is positive
            cos, sin = angle[part].cos().view(m, 1, 1), angle[part].sin().view(m, 1, 1)
            k = (radii[c] / radius[part]).view(m, 1, 1)  # pixels -> shape units
            u = (cos * dx + sin * dy) * k + centres[c, 0]  # (m, s, s)
            v = (cos * dy - sin * dx) * k + centres[c, 1]
            cover = F.avg_pool2d(_SHAPES[c](u, v).float().unsqueeze(1), SUPERSAMPLE)  # (m, 1, win, win)
            steps = torch.arange(win)
            flat = (oy.view(m, 1, 1) + steps.view(1, win, 1)) * size + ox.view(m, 1, 1) + steps.view(1, 1, win)
            out[part.view(m, 1), flat.view(m, -1)] = cover.view(m, -1)
    return out.view(-1, size, size)


def _muted_colors(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3) low-saturation, mid-brightness RGB colours in [0, 1] (random hue)."""
    hue = torch.rand(n, generator=g)
    sat = 0.05 + 0.3 * torch.rand(n, generator=g)
    val = 0.3 + 0.45 * torch.rand(n, generator=g)
    # HSV -> RGB, vectorised: channel k uses (hue * 6 + offset_k) mod 6
    h6 = (hue.unsqueeze(1) * 6 + torch.tensor([5.0, 3.0, 1.0])) % 6
    ramp = (torch.minimum(h6, 4 - h6)).clamp(0, 1)
    return val.unsqueeze(1) * (1 - sat.unsqueeze(1) * ramp)


def _backgrounds(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) float textures in [0, 1]: stripes, checkers, gradients or waves."""
    kind = torch.randint(0, 4, (n,), generator=g)
    theta = torch.rand(n, generator=g) * math.pi
    period = 3 + 6 * torch.rand(n, generator=g)  # pixels
    phase = torch.rand(n, 3, generator=g) * 2 * math.pi
    sharp = 1 + 5 * torch.rand(n, generator=g)
    waves = torch.randn(n, 3, 2, generator=g) * (2 * math.pi / size) * 1.5  # wave vectors
    c1, c2 = _muted_colors(n, g), _muted_colors(n, g)
    noise_std = 0.05 * torch.rand(n, generator=g)

    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    col = lambda t: t.view(-1, 1, 1)  # noqa: E731  (n,) -> (n, 1, 1) for broadcasting
    along = x * col(theta.cos()) + y * col(theta.sin())  # (n, H, W)
    across = y * col(theta.cos()) - x * col(theta.sin())
    t = torch.empty(n, size, size)
    for k in range(4):
        i = (kind == k).nonzero().flatten()
        if k == 0:  # stripes, soft to hard
            t[i] = torch.sigmoid(col(sharp[i]) * torch.sin(2 * math.pi * along[i] / col(period[i]) + col(phase[i, 0])))
        elif k == 1:  # rotated checkerboard
            a = torch.sin(2 * math.pi * along[i] / col(period[i]) + col(phase[i, 0]))
            b = torch.sin(2 * math.pi * across[i] / col(period[i]) + col(phase[i, 1]))
            t[i] = torch.sigmoid(2 * col(sharp[i]) * a * b)
        elif k == 2:  # linear gradient
            lo, hi = along[i].amin((1, 2), keepdim=True), along[i].amax((1, 2), keepdim=True)
            t[i] = (along[i] - lo) / (hi - lo)
        else:  # sum of three low-frequency plane waves
            w = waves[i]  # (m, 3, 2)
            arg = w[:, :, 0, None, None] * x + w[:, :, 1, None, None] * y + phase[i, :, None, None]  # (m, 3, H, W)
            t[i] = 0.5 + arg.sin().sum(1) / 6
    t = t.unsqueeze(1)  # (n, 1, H, W)
    bg = c1.view(n, 3, 1, 1) * (1 - t) + c2.view(n, 3, 1, 1) * t
    return bg + torch.randn(bg.shape, generator=g) * noise_std.view(n, 1, 1, 1)


def generate_shapes(n: int, size: int = 32, colors: str = "class", seed: int = 0) -> ImageSet:
    """Draw ``n`` images of ``size`` x ``size`` pixels, the same for the same arguments.

    Returns an :class:`ImageSet` with images (n, 3, size, size) uint8, labels (n,) int64 (as
    balanced as ``n`` allows), ``classes`` = :data:`CLASSES`, masks (n, size, size) bool and one
    caption per image ("a <size> <colour> <class> <position>"). ``colors`` is ``"class"`` (each
    class in its own colour from :data:`COLORS`) or ``"free"`` (colour drawn independently).
    """
    if colors not in COLOR_MODES:
        raise SelfSupError(f"shapes: colors must be one of {', '.join(COLOR_MODES)}, got {colors!r}")
    if size < 16:
        raise SelfSupError(f"shapes: size must be at least 16 pixels, got {size}")
    if n < 0:
        raise SelfSupError(f"shapes: n must be >= 0, got {n}")
    g = torch.Generator().manual_seed(seed)
    num_classes, palette = len(CLASSES), torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255

    # All per-image parameters up front, in a fixed order.
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    size_word = torch.randint(0, 3, (n,), generator=g)
    lo, hi = torch.tensor(SIZE_RANGES).T
    radius = (lo[size_word] + (hi - lo)[size_word] * torch.rand(n, generator=g)) * size  # pixels
    row, column = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)
    # Centroid on a 3x3 grid, spaced so the bounding circle stays inside the image, with jitter
    # small enough that the position word always agrees with the mask centroid.
    spread = size / 2 - radius - 0.5
    cx = size / 2 + (0.8 * (column - 1) + 0.4 * (torch.rand(n, generator=g) - 0.5)) * spread
    cy = size / 2 + (0.8 * (row - 1) + 0.4 * (torch.rand(n, generator=g) - 0.5)) * spread
    angle = (2 * torch.rand(n, generator=g) - 1) * MAX_ROTATION
    color = labels.clone() if colors == "class" else torch.randint(0, len(COLORS), (n,), generator=g)
    rgb = palette[color] * (0.9 + 0.15 * torch.rand(n, 1, generator=g)) + (torch.rand(n, 3, generator=g) - 0.5) * 0.1

    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    ys = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1) + 0.5
    for start in range(0, n, CHUNK):
        sl = slice(start, start + CHUNK)
        m = len(labels[sl])
        cover = _coverage(labels[sl], cx[sl], cy[sl], radius[sl], angle[sl], size)  # (m, H, W)
        bg = _backgrounds(m, size, g)
        shade = 1 - 0.12 * (ys - cy[sl].view(-1, 1, 1, 1)) / radius[sl].view(-1, 1, 1, 1)  # lit from above
        fg = rgb[sl].view(m, 3, 1, 1) * shade
        a = cover.unsqueeze(1)
        images[sl] = (bg * (1 - a) + fg * a).mul(255).round().clamp(0, 255).to(torch.uint8)
        masks[sl] = cover >= 0.5

    names = list(COLORS)
    captions = [f"a {SIZES[s]} {names[c]} {CLASSES[k]} {POSITIONS[r][q]}"
                for s, c, k, r, q in zip(size_word.tolist(), color.tolist(), labels.tolist(), row.tolist(), column.tolist())]
    return ImageSet(images, labels.long(), classes=list(CLASSES), captions=captions, masks=masks)


def canonical_masks(size: int = 64) -> torch.Tensor:
    """One upright, centred, large mask per class, (C, size, size) bool, without any jitter.

    The object's centroid sits at the image centre, so a ``torch.rot90`` of a mask is the same
    object rotated about its centroid (used to check that no class is a rotation of another).
    """
    labels = torch.arange(len(CLASSES))
    centre = torch.full((len(CLASSES),), size / 2)
    radius = torch.full((len(CLASSES),), 0.45 * size)
    return _coverage(labels, centre, centre, radius, torch.zeros(len(CLASSES)), size) >= 0.5


def _int_option(options: dict, key: str, default: int, minimum: int) -> int:
    raw = options.pop(key, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise SelfSupError(f"shapes: option {key}={raw!r} is not an integer") from None
    if value < minimum:
        raise SelfSupError(f"shapes: option {key}={value} must be at least {minimum}")
    return value


def load_shapes(options: dict, data_dir: str | None = None, download: bool = False,
                strict: bool = False) -> DatasetSplits:
    """The ``shapes`` dataset from spec options (strings): n, n_test, size, colors, seed.

    Train is ``generate_shapes(n, seed=2*seed)`` and test ``generate_shapes(n_test,
    seed=2*seed+1)``: a fixed split whose two halves never share a random stream.
    ``data_dir``, ``download`` and ``strict`` are accepted for the common loader signature.
    """
    options = dict(options)
    n = _int_option(options, "n", 10000, 1)
    n_test = _int_option(options, "n_test", 2000, 0)
    size = _int_option(options, "size", 32, 16)
    seed = _int_option(options, "seed", 0, 0)
    colors = options.pop("colors", "class")
    if colors not in COLOR_MODES:
        raise SelfSupError(f"shapes: option colors={colors!r} must be one of {', '.join(COLOR_MODES)}")
    if options:
        raise SelfSupError(f"shapes: unknown option(s) {', '.join(options)} (known: n, n_test, size, colors, seed)")
    train = generate_shapes(n, size=size, colors=colors, seed=2 * seed)
    test = generate_shapes(n_test, size=size, colors=colors, seed=2 * seed + 1) if n_test else None
    info = {"source": "synthetic", "n": n, "n_test": n_test, "size": size, "colors": colors, "seed": seed}
    return DatasetSplits("shapes", train, test, info=info)
