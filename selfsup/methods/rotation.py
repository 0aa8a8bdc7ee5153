"""Rotation prediction (RotNet): which of 0, 90, 180, 270 degrees was an image turned by?

Gidaris, Singh, Komodakis. "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018. https://arxiv.org/abs/1803.07728

Every image of the batch goes in all four rotations (the paper's loader; VISSL's one random
rotation per image is a weaker variant), made with ``rot90`` so there is no interpolation and
no black corner to give the angle away. A 4-way head on the pooled backbone features, plain
cross-entropy. The last stage tends to specialise in the pretext task: probe earlier stages
too (``selfsup eval --layer auto``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import ViewConfig, make_view
from ..errors import SelfSupError
from ..models.heads import mlp
from .base import DataInfo, Method, Picture, denormalize


@dataclass
class Config:
    crop_min: float = 0.5   # random-resized-crop minimum area (RotNet on CIFAR: pad-4 crops, i.e. mild)
    flip_p: float = 0.5     # horizontal flip before rotating (a flip is not a rotation, so the label stays)
    head_hidden: int = 256  # 0: a linear 4-way head; else Linear-BN-ReLU-Linear (keeps the backbone less task-specific)

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "crop_min": "(0, 1]", "flip_p": "[0, 1]", "head_hidden": ">= 0",
    }


def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(4B, C, H, W) of the batch turned by 0, 90, 180 and 270 degrees (counter-clockwise), and the labels 0-3."""
    if x.shape[-1] != x.shape[-2]:
        raise SelfSupError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return rotated, labels


class Rotation(Method):
    Config = Config
    compile_pays = ("conv",)   # compile=auto: measured on a CPU in fp32 (BENCHMARKS.md, compile-auto)
    train_defaults = dict(optimizer="adamw", lr=4e-3, weight_decay=5e-4, batch_size=128, epochs=20, warmup_epochs=0.05)

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        d = backbone.embed_dim
        self.head = nn.Linear(d, 4) if cfg.head_hidden == 0 else mlp(d, cfg.head_hidden, 4, layers=2)
        self.view = ViewConfig(size=data.image_size, scale=(cfg.crop_min, 1.0), flip_p=cfg.flip_p, jitter_p=0.0,
                               gray_p=0.0, blur_p=0.0)

    def forward(self, batch: dict):
        x = make_view(batch["images"], self.view, self.data.mean, self.data.std)
        rotated, labels = rotate_all(x)
        logits = self.head(self.backbone(rotated))
        loss = F.cross_entropy(logits, labels)
        return loss, {"pretext_acc": (logits.argmax(1) == labels).float().mean().detach()}

    def pictures(self, batch: dict):
        """Four rows of 8: the images at 0, 90, 180, 270 degrees, as the network sees them."""
        x = make_view(batch["images"][:8], self.view, self.data.mean, self.data.std)
        return {"rotations": Picture(denormalize(rotate_all(x)[0], self.data),
                                     ("turned 0°", "turned 90°", "turned 180°", "turned 270°"))}
