"""SimCLR: contrastive learning of two augmented views with the NT-Xent loss.

Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. https://arxiv.org/abs/2002.05709

Two views of each image (random resized crop, flip, colour distortion), backbone -> MLP
projector -> L2-normalised z; each view must find its partner among all 2N - 1 others in the
global batch (negatives gathered from every process with gradient). Evaluation uses the
backbone embedding h, not z (the paper: h is >10 points better).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import ViewConfig, make_views
from ..losses import nt_xent
from ..models.heads import mlp
from .base import DataInfo, Method, Picture, denormalize


@dataclass
class Config:
    temperature: float = 0.2     # tau; 0.1 on ImageNet, 0.5 on CIFAR at 1000 epochs; 0.2 won on Fashion-MNIST val (BENCHMARKS.md)
    proj_hidden: int = 512       # projector hidden width
    proj_dim: int = 128          # z dimension
    proj_layers: int = 2         # Linear-BN-ReLU x (layers - 1), then Linear
    crop_min: float = 0.2        # random-resized-crop minimum area fraction (0.08 in the paper; small images want more)
    flip_p: float = 0.5
    color_strength: float = 1.0  # s: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) (s=1 ImageNet); hue/saturation are no-ops on grey data
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0          # the paper drops blur at 32 px

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "temperature": "> 0", "proj_hidden": ">= 1", "proj_dim": ">= 1", "proj_layers": ">= 1",
        "crop_min": "(0, 1]", "flip_p": "[0, 1]", "color_strength": ">= 0", "jitter_p": "[0, 1]",
        "gray_p": "[0, 1]", "blur_p": "[0, 1]",
    }


class SimCLR(Method):
    Config = Config
    compile_pays = ("conv",)   # compile=auto: measured on a CPU in fp32 (BENCHMARKS.md, compile-auto)
    # chosen on Fashion-MNIST's validation split at a 4-minute CPU budget (benchmarks/simclr_tuning.py)
    train_defaults = dict(optimizer="adamw", lr=8e-3, weight_decay=1e-4, batch_size=128, epochs=5, warmup_epochs=0.5)

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        self.projector = mlp(backbone.embed_dim, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers)
        s = cfg.color_strength
        self.view = ViewConfig(size=data.image_size, scale=(cfg.crop_min, 1.0), flip_p=cfg.flip_p, jitter_p=cfg.jitter_p,
                               brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s,
                               gray_p=cfg.gray_p, blur_p=cfg.blur_p)

    def views(self, images):
        """Two independently augmented, normalised views (B, C, S, S) of a uint8 batch (built as one
        batch of 2B: make_views)."""
        return make_views(images, [self.view, self.view], self.data.mean, self.data.std)

    def forward(self, batch: dict):
        v1, v2 = self.views(batch["images"])
        n = v1.shape[0]
        z = self.projector(self.backbone(torch.cat([v1, v2])))   # one pass over both views: (2n, proj_dim)
        loss, acc = nt_xent(z[:n], z[n:], self.cfg.temperature)
        return loss, {"pos_acc": acc.detach()}

    def pictures(self, batch: dict):
        v1, v2 = self.views(batch["images"][:8])
        return {"views": Picture(denormalize(torch.cat([v1, v2]), self.data), ("view 1", "view 2"))}

