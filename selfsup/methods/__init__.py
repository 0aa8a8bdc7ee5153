"""The method registry: one line per method. Tests, ``selfsup bench`` and the README table loop over it."""
from __future__ import annotations

from ..errors import SelfSupError
from .base import DataInfo, Method
from .clip import CLIP
from .colorization import Colorization
from .dino import DINO
from .inpainting import Inpainting
from .jigsaw import Jigsaw
from .mae import MAE
from .moco import MoCo, MoCoV3
from .rotation import Rotation
from .simclr import SimCLR
from .supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "rotation": Rotation,
    "jigsaw": Jigsaw,
    "colorization": Colorization,
    "inpainting": Inpainting,
    "simclr": SimCLR,
    "moco": MoCo,
    "mocov3": MoCoV3,
    "dino": DINO,
    "mae": MAE,
    "clip": CLIP,
    "supervised": Supervised,   # uses labels: the from-scratch baseline, and fine-tuning's training
}


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise SelfSupError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]
