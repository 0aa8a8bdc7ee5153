"""Backbone registry: ``BACKBONES[name](in_chans=..., img_size=...)`` -> module with ``embed_dim``,
``forward_features(x)`` (feature map or tokens) and ``forward(x)`` (pooled embedding)."""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import nn

from ..errors import SelfSupError
from .resnet import ResNet
from .vit import ViT, plain_attention_on_cpu


def _resnet(layers, width, block="basic", in_chans=3, img_size=None, **kw):
    return ResNet(layers, width=width, in_chans=in_chans, block=block, **kw)


def _vit(embed_dim, depth, heads, in_chans=3, img_size=32, patch_size=4, **kw):
    return ViT(embed_dim, depth, heads, patch_size=patch_size, img_size=img_size, in_chans=in_chans, **kw)


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": partial(_resnet, (2, 2, 2, 2), 64),
    "resnet18_quarter": partial(_resnet, (2, 2, 2, 2), 16),  # the CPU default: 1/4 width, ~0.7M parameters
    "resnet34": partial(_resnet, (3, 4, 6, 3), 64),
    "resnet50": partial(_resnet, (3, 4, 6, 3), 64, "bottleneck"),
    "vit_micro": partial(_vit, 128, 6, 4),   # ~1.2M parameters: trains on two CPU cores
    # the same with 8-pixel patches: 16 tokens at 32 px instead of 64, about 4x fewer FLOPs per view
    # (DINO's two global crops through vit_micro ran at ~54 images/s on two cores)
    "vit_micro_p8": partial(_vit, 128, 6, 4, patch_size=8),
    "vit_tiny": partial(_vit, 192, 12, 3),
    "vit_small": partial(_vit, 384, 12, 6),
}

DEFAULT_BACKBONE = "resnet18_quarter"


def family(name: str) -> str:
    """"vit" for the registry's ViTs (``vit_*``), "conv" for the rest: methods may keep training
    defaults per family (``Method.family_defaults``)."""
    return "vit" if name.startswith("vit") else "conv"


def create_backbone(name: str, in_chans: int = 3, img_size: int = 32, **kw) -> nn.Module:
    """Build a registered backbone for ``in_chans``-channel images of side ``img_size``."""
    if name not in BACKBONES:
        raise SelfSupError(f"--backbone {name}: unknown backbone (known: {', '.join(BACKBONES)})")
    return BACKBONES[name](in_chans=in_chans, img_size=img_size, **kw)


INPUT_SPACES = ("rgb", "lab_l")


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's last features as a spatial map (B, D, h, w): a ResNet's own map, or a ViT's
    patch tokens (B, 1 + h*w, D) without the CLS token, laid back on their square grid."""
    f = backbone.forward_features(x)
    if f.dim() == 3:
        tokens = f[:, 1:]
        g = math.isqrt(tokens.shape[1])
        f = tokens.transpose(1, 2).reshape(len(tokens), -1, g, g)
    return f


def is_vit(backbone: nn.Module) -> bool:
    """Whether ``backbone`` is one of our ViTs (patch embedding, blocks, a CLS token) rather than a CNN."""
    return isinstance(backbone, ViT)


def input_channels(input_space: str, data_channels: int) -> int:
    """Channels the backbone takes: the data's own, or 1 for the Lab lightness of RGB images."""
    if input_space not in INPUT_SPACES:
        raise SelfSupError(f"unknown input space {input_space!r} (known: {', '.join(INPUT_SPACES)})")
    return 1 if input_space == "lab_l" else data_channels


class Encoder(nn.Module):
    """A backbone with its input normalisation: takes uint8 or [0, 1] float images (B, C, H, W)
    and returns the pooled embedding (B, D). What ``selfsup.load_backbone`` gives back.

    With ``input_space="lab_l"`` (a colorization backbone) RGB images are turned into their
    Lab lightness first, exactly as in training; ``mean``/``std`` are then unused."""

    def __init__(self, backbone: nn.Module, mean, std, input_space: str = "rgb"):
        super().__init__()
        input_channels(input_space, len(mean))
        self.backbone = backbone
        self.embed_dim = backbone.embed_dim
        self.input_space = input_space
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_space == "lab_l":
            from ..data.color import lightness_input
            if x.shape[1] != 3:
                raise SelfSupError(f"this backbone sees the lightness of RGB images; got {x.shape[1]} channel(s)")
            return lightness_input(x)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        return self.backbone.forward_features(self.normalize(x), stage=stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))
