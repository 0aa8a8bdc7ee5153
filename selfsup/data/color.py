"""Colour-space conversions on batches ``[B, 3, H, W]``: sRGB <-> CIE Lab (D65), vectorised torch.

Lab follows the float convention (skimage, colormath): L in [0, 100], a and b roughly in
[-110, 110] for sRGB colours; not OpenCV's 8-bit rescaling (L * 255/100, ab + 128). sRGB is
decoded with its exact piecewise gamma curve, then linear RGB -> XYZ with the sRGB matrix
(D65 white) and XYZ -> Lab with the CIE 1976 formulas.
"""
from __future__ import annotations

import torch

from .augment import to_float

# linear sRGB -> XYZ (IEC 61966-2-1, D65); each row sums to the white point's X, Y, Z
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(1)                     # D65: (0.95047, 1.0, 1.08883)
_DELTA = 6 / 29                                 # CIE f(t): cube root above DELTA^3, linear below
_TO_T = (_RGB_TO_XYZ / _WHITE[:, None]).tolist()     # linear RGB -> XYZ / white
_FROM_T = (_XYZ_TO_RGB * _WHITE).tolist()            # XYZ / white -> linear RGB


def _mix(m: list, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix (nested lists) to the channels of ``x [B, 3, H, W]``; elementwise rather than
    a matmul, so that autocast leaves it in float32 (bf16 Lab would be off by whole units)."""
    c = x.unbind(1)
    return torch.stack([row[0] * c[0] + row[1] * c[1] + row[2] * c[2] for row in m], 1)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] ``[B, 3, H, W]`` (float) -> Lab ``[B, 3, H, W]``: L in [0, 100], a, b about [-110, 110]."""
    lin = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)
    t = _mix(_TO_T, lin)
    f = torch.where(t > _DELTA ** 3, t.clamp(min=_DELTA ** 3) ** (1 / 3), t / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``[B, 3, H, W]`` -> sRGB ``[B, 3, H, W]`` clamped to [0, 1] (out-of-gamut colours clip per channel)."""
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], 1)
    t = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
    lin = _mix(_FROM_T, t).clamp(0, 1)
    return torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055).clamp(0, 1)


def lightness_input(images: torch.Tensor) -> torch.Tensor:
    """What a colorization backbone sees: uint8 or [0, 1] float RGB ``[B, 3, H, W]`` -> ``[B, 1, H, W]``
    float ``(L - 50) / 50`` in [-1, 1]. A grey batch ``[B, 1, H, W]`` is taken as R = G = B."""
    x = to_float(images)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (rgb_to_lab(x)[:, :1] - 50) / 50
