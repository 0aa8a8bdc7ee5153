"""Supervised training of a backbone with a linear head: the from-scratch baseline (``supervised``)
and, started from a pretrained backbone (``init``), end-to-end fine-tuning (``selfsup eval finetune``).

One class for both arms, so they share the augmentation (random-resized crop and flip), the loss
(cross-entropy with label smoothing), the schedule and the training loop. Fine-tuning differs only
in where the backbone starts and in its learning rates: a lower rate for a pretrained ResNet
(``backbone_lr_scale``, 0.1 by default) and, for a ViT, layer-wise decay (block i of n gets
``layer_decay ** (n + 1 - i)`` of the head's rate, the patch embedding ``layer_decay ** (n + 1)``;
BEiT / MAE fine-tuning). ``freeze_stages`` keeps the first stages (ResNet) or blocks (ViT) fixed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import ViewConfig, make_view, normalize, to_float
from ..errors import SelfSupError
from ..models import is_vit
from ..models.params import param_groups
from .base import DataInfo, Method


@dataclass
class Config:
    init: str = ""                  # run folder or backbone.safetensors to start from (fine-tuning); "" = random init
    crop_min: float = 0.35          # random-resized-crop minimum area fraction, plus flips
    flip_p: float = 0.5
    label_smoothing: float = 0.1
    head_norm: bool = True          # affine-free BatchNorm before the linear head (MAE's linear probe; harmless here)
    backbone_lr_scale: float = 0.0  # backbone lr / head lr; 0 = auto: 1 from scratch, 0.1 for a pretrained ResNet, 1 for a ViT (layer_decay does it)
    layer_decay: float = 0.75       # ViT fine-tuning: layer-wise lr decay (1 = off); not used from scratch
    freeze_stages: int = 0          # keep the first N stages / blocks (and the stem / patch embedding) fixed

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "crop_min": "(0, 1]", "flip_p": "[0, 1]", "label_smoothing": "[0, 1)", "backbone_lr_scale": ">= 0",
        "layer_decay": "(0, 1]", "freeze_stages": ">= 0",
    }


class Supervised(Method):
    Config = Config
    compile_pays = ("conv",)   # compile=auto: measured on a CPU in fp32 (BENCHMARKS.md, compile-auto)
    uses_labels = True
    train_defaults = dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, batch_size=128, epochs=20, warmup_epochs=1.0)

    def __init__(self, backbone, cfg: Config, data: DataInfo, pretrained: nn.Module | None = None):
        """``pretrained``: the Encoder (from ``selfsup.runs.load_backbone``) of the run named by
        ``cfg.init``, which the app loads; its weights and normalisation are copied in."""
        super().__init__(backbone, cfg, data)
        if data.num_classes < 2:
            raise SelfSupError("supervised training needs labelled data with at least 2 classes")
        if cfg.freeze_stages > backbone.num_stages:
            raise SelfSupError(f"--set freeze_stages={cfg.freeze_stages}: must be between 0 and {backbone.num_stages}")
        self.pretrained = bool(cfg.init)
        if self.pretrained:
            if pretrained is None:
                raise SelfSupError(f"--set init={cfg.init}: the pretrained backbone was not passed in")
            self._load_init(cfg.init, pretrained)
        d = backbone.embed_dim
        self.head = nn.Sequential(*([nn.BatchNorm1d(d, affine=False)] if cfg.head_norm else []), nn.Linear(d, data.num_classes))
        nn.init.trunc_normal_(self.head[-1].weight, std=0.01)
        nn.init.zeros_(self.head[-1].bias)
        self._freeze()
        self.view = ViewConfig(size=data.image_size, scale=(cfg.crop_min, 1.0), flip_p=cfg.flip_p, jitter_p=0.0,
                               gray_p=0.0, blur_p=0.0)

    @classmethod
    def pretrained_from(cls, cfg: Config) -> str:
        return cfg.init

    def _load_init(self, path: str, enc: nn.Module) -> None:
        """Copy a pretrained backbone in; take its normalisation (what it was trained to see)."""
        meta = enc.meta
        if meta.get("input_space", "rgb") != "rgb":
            raise SelfSupError(f"--checkpoint {path}: fine-tuning a backbone that sees {meta['input_space']} is not supported")
        if meta["in_chans"] != self.data.channels or meta["img_size"] != self.data.image_size:
            raise SelfSupError(f"--checkpoint {path}: trained on {meta['in_chans']}-channel {meta['img_size']} px images, "
                               f"the data has {self.data.channels}-channel {self.data.image_size} px")
        try:
            self.backbone.load_state_dict(enc.backbone.state_dict())
        except RuntimeError as e:
            raise SelfSupError(f"--checkpoint {path}: its {meta['backbone']} weights do not fit this backbone "
                               f"({str(e).splitlines()[0]})") from None
        self.data = DataInfo(self.data.channels, self.data.image_size, list(meta["mean"]), list(meta["std"]),
                             self.data.num_classes)

    # ---------------------------------------------------------------- what trains, at what rate
    def _stage_of(self, name: str) -> int:
        """0 for the stem / patch embedding / tokens, i for stage or block i, n + 1 for the final norm and head."""
        n = self.backbone.num_stages
        if name.startswith("head."):
            return n + 1
        parts = name.split(".")
        if is_vit(self.backbone):                         # backbone.vit.blocks.<i>....
            if "blocks" in parts:
                return int(parts[parts.index("blocks") + 1]) + 1
            return n + 1 if parts[2].startswith(("norm", "fc_norm", "head")) and parts[2] != "norm_pre" else 0
        if "stages" in parts:                             # backbone.stages.<i>....
            return int(parts[parts.index("stages") + 1]) + 1
        return 0

    def _freeze(self) -> None:
        if self.cfg.freeze_stages:
            for name, p in self.named_parameters():
                if name.startswith("backbone.") and self._stage_of(name) <= self.cfg.freeze_stages:
                    p.requires_grad_(False)

    def lr_scale(self, name: str) -> float:
        """This parameter's learning rate as a fraction of the head's."""
        if name.startswith("head.") or not self.pretrained:
            return 1.0
        vit = is_vit(self.backbone)
        base = self.cfg.backbone_lr_scale or (1.0 if vit else 0.1)
        if vit and self.cfg.layer_decay < 1:
            return base * self.cfg.layer_decay ** (self.backbone.num_stages + 1 - self._stage_of(name))
        return base

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self, weight_decay, scale_of=self.lr_scale)

    # ---------------------------------------------------------------- the step
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def forward(self, batch: dict):
        if "labels" not in batch:
            raise SelfSupError("supervised training needs labelled data (class folders or a labelled dataset)")
        x = make_view(batch["images"], self.view, self.data.mean, self.data.std)
        labels = batch["labels"].to(x.device)
        logits = self.logits(x)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        return loss, {"train_acc": (logits.argmax(1) == labels).float().mean().detach()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class predictions (N,) for uint8 images, in eval mode, without augmentation."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = []
        try:
            for i in range(0, len(images), batch_size):
                x = normalize(to_float(images[i:i + batch_size].to(dev)), self.data.mean, self.data.std)
                out.append(self.logits(x).argmax(1).cpu())
        finally:
            self.train(was)
        return torch.cat(out)

    def pictures(self, batch: dict):
        from .base import Picture, denormalize
        x = make_view(batch["images"][:8], self.view, self.data.mean, self.data.std)
        return {"views": Picture(denormalize(x, self.data), ("training view",))}
