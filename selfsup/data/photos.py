"""``photos``: a small real colour dataset cut from the photographs bundled with scikit-image.

Each image is a random square crop (side between 1/8 and 1/2 of the photo's shorter side),
resized to ``size`` and randomly flipped; its label is the photo it came from, so a kNN or linear
probe asks "which photograph is this patch from?". Train and test crops come from different
random streams of the same photos (they may overlap in area, as patches of one scene do).

Options: ``n`` (train crops, 4000), ``n_test`` (1000; 0 = no test split), ``size`` (32),
``seed`` (0). Needs scikit-image (``pip install scikit-image``, the ``photos`` extra); only the
photographs shipped inside its wheel are used, so nothing is downloaded.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import SelfSupError
from .core import DatasetSplits, ImageSet

# class name -> how to get the (H, W, 3) uint8 photo from skimage.data
PHOTOS = {
    "astronaut": lambda d: d.astronaut(),
    "coffee": lambda d: d.coffee(),
    "chelsea": lambda d: d.chelsea(),
    "rocket": lambda d: d.rocket(),
    "hubble_deep_field": lambda d: d.hubble_deep_field(),
    "immunohistochemistry": lambda d: d.immunohistochemistry(),
    "retina": lambda d: d.retina(),
    "motorcycle": lambda d: d.stereo_motorcycle()[0],  # the left view
}
OPTIONS = {"n": "4000", "n_test": "1000", "size": "32", "seed": "0"}


def load_photos_raw() -> dict[str, torch.Tensor]:
    """The source photos as float (3, H, W) tensors in [0, 255], in class order."""
    try:
        import skimage.data as data
    except ImportError:
        raise SelfSupError("the photos dataset needs scikit-image: pip install scikit-image "
                           "(or the selfsup[photos] extra)") from None
    photos = {}
    for name, get in PHOTOS.items():
        try:
            arr = get(data)
        except Exception as e:  # a packaging that leaves the file out (it would need pooch)
            raise SelfSupError(f"photos: scikit-image could not load its bundled photo {name!r} ({e})") from None
        photos[name] = torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float()  # (3, H, W)
    return photos


def _prepare(photo: torch.Tensor, size: int) -> torch.Tensor:
    """Downscale (antialiased) so the shorter side is at most 8*size: the smallest crop (1/8 of it)
    then still has at least ``size`` pixels, and every crop is at most a 4x reduction."""
    short = min(photo.shape[1:])
    if short <= 8 * size:
        return photo
    scale = 8 * size / short
    h, w = round(photo.shape[1] * scale), round(photo.shape[2] * scale)
    return F.interpolate(photo[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]


@lru_cache(maxsize=2)
def _prepared(size: int) -> tuple[list[str], list[torch.Tensor]]:
    """(class names, downscaled photos), kept for the process (about 8 MB at size 32); read-only."""
    named = load_photos_raw()
    return list(named), [_prepare(p, size) for p in named.values()]


def random_crops(photos: list[torch.Tensor], n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random crops -> (images (n, 3, size, size) uint8, labels (n,) int64).

    Labels are balanced (n // K or n // K + 1 per photo). Each crop is resampled with roi_align
    at an adaptive sampling ratio, i.e. averaging ~(side/size)^2 bilinear samples per output
    pixel: an antialiased resize, done in one call per photo.
    """
    from torchvision.ops import roi_align

    k = len(photos)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=generator)]
    u = torch.rand(n, 4, generator=generator)  # side, x, y, flip
    images = torch.empty(n, 3, size, size)
    for c, photo in enumerate(photos):
        idx = (labels == c).nonzero().flatten()
        if len(idx) == 0:
            continue
        _, h, w = photo.shape
        short = min(h, w)
        side = short / 8 + u[idx, 0] * (short / 2 - short / 8)  # (m,)
        x0 = u[idx, 1] * (w - side)
        y0 = u[idx, 2] * (h - side)
        boxes = torch.stack([torch.zeros_like(side), x0, y0, x0 + side, y0 + side], dim=1)  # (m, 5)
        images[idx] = roi_align(photo[None], boxes, output_size=size, spatial_scale=1.0,
                                sampling_ratio=-1, aligned=True)
    flip = u[:, 3] < 0.5
    images[flip] = images[flip].flip(-1)
    return images.round_().clamp_(0, 255).to(torch.uint8), labels


def _int_option(raw: dict, key: str, low: int) -> int:
    try:
        value = int(raw[key])
        if value < low:
            raise ValueError
    except ValueError:
        raise SelfSupError(f"photos: option {key}={raw[key]!r} must be an integer >= {low}") from None
    return value


def load_photos(options: dict, data_dir: str | None = None, download: bool = False,
                strict: bool = False) -> DatasetSplits:
    """Random crops of scikit-image's bundled colour photographs, labelled by photo (see module docstring)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise SelfSupError(f"photos: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    raw = {**OPTIONS, **{k: str(v) for k, v in options.items()}}
    n, n_test = _int_option(raw, "n", 1), _int_option(raw, "n_test", 0)
    size, seed = _int_option(raw, "size", 1), _int_option(raw, "seed", 0)

    classes, photos = _prepared(size)
    # train and test from different streams: seeds 2*seed and 2*seed + 1 never collide
    train = ImageSet(*random_crops(photos, n, size, torch.Generator().manual_seed(2 * seed)), classes=list(classes))
    test = None
    if n_test:
        test = ImageSet(*random_crops(photos, n_test, size, torch.Generator().manual_seed(2 * seed + 1)),
                        classes=list(classes))
    info = {"source": "skimage.data (" + ", ".join(classes) + ")", "n": n, "n_test": n_test, "size": size, "seed": seed}
    return DatasetSplits("photos", train, test, info=info)
