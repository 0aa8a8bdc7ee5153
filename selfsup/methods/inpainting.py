"""Inpainting (context encoder): hide a region of the image and predict it from the rest.

Pathak, Krähenbühl, Donahue, Darrell, Efros. "Context Encoders: Feature Learning by Inpainting",
CVPR 2016. https://arxiv.org/abs/1604.07379

A region covering ``hole_fraction`` of each image (a central square, or a union of random
rectangles) is chosen; its interior, the region shrunk by ``overlap`` px per side, is filled with
the dataset mean (0 after normalisation) and the backbone sees the result. A conv decoder turns
the backbone's last feature map back into pixels; the loss is L2 on the whole region with the
visible ``overlap`` band weighted ``overlap_weight`` (Pathak's ``overlapPred=4`` at 128 px,
weight 10), pixels outside the region weigh nothing. An optional adversarial term (off by
default; the paper's released feature-learning models use L2 only) adds a small discriminator.

Departures: the encoder is the library's backbone (no AlexNet, no channel-wise fully-connected
layer: the last map of a small-image ResNet or ViT already sees the whole image); the decoder
upsamples with nearest + 3x3 conv instead of transposed convolutions; "random blocks" are
unions of random rectangles trimmed to cover exactly ``hole_fraction`` (Pathak's random-region
masks came from PASCAL segmentations, which we do not have); blocks are the default (below).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import ViewConfig, make_view, normalize, to_float
from ..errors import SelfSupError
from ..models import feature_map
from .base import DataInfo, Method, Picture, denormalize


@dataclass
class Config:
    mask: str = "blocks"            # "blocks" (random rectangles) | "center" (central square); blocks: see Inpainting
    hole_fraction: float = 0.25     # area of the region to predict, as a fraction of the image (paper: 1/4)
    overlap: int = 1                # visible band inside the region's border, px per side (paper: 4 at 128 px, i.e. ~1 at 32)
    overlap_weight: float = 10.0    # loss weight of the band relative to the hidden interior (paper: 10)
    block_min: float = 0.25         # blocks: shortest rectangle side, as a fraction of the image side
    block_max: float = 0.5          # blocks: longest rectangle side, as a fraction of the image side
    decoder_width: int = 64         # channels of the decoder's first stage, halved at each x2 upsampling
    adversarial_weight: float = 0.0  # lambda_adv; reconstruction gets 1 - lambda_adv (paper: 0.001)
    crop_min: float = 0.5           # random-resized-crop minimum area fraction before masking
    flip_p: float = 0.5             # horizontal flip probability

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "mask": ("blocks", "center"), "hole_fraction": "(0, 1)", "overlap": ">= 0", "overlap_weight": ">= 0",
        "block_min": "(0, 1]", "block_max": "(0, 1]", "decoder_width": ">= 1", "adversarial_weight": "[0, 1)",
        "crop_min": "(0, 1]", "flip_p": "[0, 1]",
    }


# ----------------------------------------------------------------------------- masks and losses

def region_masks(n: int, size: int, mode: str = "blocks", fraction: float = 0.25, block_sides=(0.25, 0.5),
                 generator=None) -> torch.Tensor:
    """Bool (n, 1, size, size): the region to predict, one per sample.

    "center": the centred square of side round(sqrt(fraction) * size) (coverage off by at most
    about sqrt(fraction) / size from rounding). "blocks": random axis-aligned rectangles (sides
    uniform in ``block_sides`` x size) laid one after another; every pixel gets the time it is
    first covered (rectangle index + its raster position inside that rectangle), and the first
    round(fraction * size**2) pixels in time form the mask, so coverage is exact: the union of
    the first rectangles plus the top rows of the next. Random draws on the CPU (``generator``
    or the global RNG)."""
    yy = torch.arange(size).view(1, 1, size, 1)
    xx = torch.arange(size).view(1, 1, 1, size)
    if mode == "center":
        side = round(math.sqrt(fraction) * size)
        lo = (size - side) // 2
        m = (yy >= lo) & (yy < lo + side) & (xx >= lo) & (xx < lo + side)
        return m.expand(n, 1, size, size).clone()
    k = max(4, math.ceil(3 * fraction / block_sides[0] ** 2))      # enough rectangles to cover the target
    lo_s, hi_s = max(1, round(block_sides[0] * size)), max(1, round(block_sides[1] * size))
    hw = torch.randint(lo_s, hi_s + 1, (2, n, k, 1, 1), generator=generator)
    h, w = hw[0], hw[1]                                               # (n, k, 1, 1)
    top = (torch.rand(n, k, 1, 1, generator=generator) * (size - h + 1)).floor()
    left = (torch.rand(n, k, 1, 1, generator=generator) * (size - w + 1)).floor()
    inside = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)          # (n, k, S, S)
    order = torch.arange(k).view(1, k, 1, 1) + ((yy - top) * w + (xx - left)) / (h * w)
    t = torch.where(inside, order, torch.tensor(float("inf"))).amin(1)               # (n, S, S)
    t = torch.minimum(t, k + (yy[0, 0] * size + xx[0, 0]) / size ** 2)   # fallback if the union falls short
    count = max(1, round(fraction * size * size))
    cut = t.flatten(1).kthvalue(count, dim=1).values.view(n, 1, 1)
    return (t <= cut).unsqueeze(1)


def erode(mask: torch.Tensor, px: int) -> torch.Tensor:
    """The region shrunk by ``px`` pixels per side (square structuring element), bool (B, 1, H, W).
    Outside the image counts as region, so a hole may reach the image's edge."""
    if px <= 0:
        return mask.clone()
    return -F.max_pool2d(-mask.float(), 2 * px + 1, stride=1, padding=px) > 0.5


def loss_weights(mask: torch.Tensor, hole: torch.Tensor, overlap_weight: float) -> torch.Tensor:
    """Float (B, 1, H, W): 1 on the hidden hole, ``overlap_weight`` on the band (mask minus hole), 0 elsewhere."""
    return hole.float() + overlap_weight * (mask & ~hole).float()


def masked_l2(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted squared error summed over pixels and channels, divided by the sum of the weights
    (broadcast over channels), so its scale does not depend on the hole's size. (B, C, H, W)."""
    w = weight.expand_as(pred)
    return (w * (pred - target) ** 2).sum() / w.sum().clamp_min(1e-12)


def fill_mean(x: torch.Tensor, hole: torch.Tensor, mean) -> torch.Tensor:
    """Reference: ``x`` (B, C, H, W) with the ``hole`` (B, 1, H, W) pixels set to the per-channel ``mean``."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return torch.where(hole, m, x)


def fill_border_interpolation(x: torch.Tensor, hole: torch.Tensor, iters: int = 300) -> torch.Tensor:
    """Reference: harmonic fill of the ``hole`` from its border (Laplace's equation, the hole's
    pixels relaxed to the mean of their 4 neighbours by Jacobi iterations; the image's edge
    reflects). Starts from the mean of the known pixels; reproduces any linear ramp."""
    hole_f = hole.to(x.dtype)
    known = 1 - hole_f
    start = (x * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1)
    y = torch.where(hole, start, x)
    for _ in range(iters):
        p = F.pad(y, (1, 1, 1, 1), mode="replicate")
        avg = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4
        y = torch.where(hole, avg, x)
    return y


def discriminator(channels: int, width: int = 32) -> nn.Sequential:
    """A small conv discriminator: (B, C, H, W) -> one logit per image (B,). No BN (real and fake
    go through it separately)."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(2 * width, 1, 3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(0))


# ----------------------------------------------------------------------------- the method

class Inpainting(Method):
    """Context encoder on a library backbone. ``mask="blocks"`` by default: with a central hole the
    backbone never sees image centres during training (where Fashion-MNIST's objects are) and its
    features can latch onto the hole's fixed border (Pathak et al. prefer random regions for
    features); random rectangles hide and show every position. ``mask="center"`` is the paper's
    inpainting setting. ``reconstruction_error`` compares the model with mean and border fills."""

    Config = Config
    train_defaults = dict(optimizer="adamw", lr=2e-3, weight_decay=1e-4, batch_size=128, epochs=10, warmup_epochs=0.1)

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        self._check(cfg, data.image_size)
        S, C = data.image_size, data.channels
        with torch.no_grad():   # the feature grid decides how many x2 stages the decoder needs
            was = backbone.training
            grid = feature_map(backbone.eval(), torch.zeros(1, C, S, S)).shape[-1]
            backbone.train(was)
        width = d = cfg.decoder_width
        layers = [nn.Conv2d(backbone.embed_dim, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)]
        for i in range(max(0, math.ceil(math.log2(S / grid)))):
            d_next = max(16, width >> (i + 1))
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(d, d_next, 3, padding=1, bias=False),
                       nn.BatchNorm2d(d_next), nn.ReLU(inplace=True)]
            d = d_next
        layers.append(nn.Conv2d(d, C, 3, padding=1))
        self.decoder = nn.Sequential(*layers)
        self.disc = discriminator(C) if cfg.adversarial_weight > 0 else None
        self.view = ViewConfig(size=S, scale=(cfg.crop_min, 1.0), flip_p=cfg.flip_p, jitter_p=0.0, gray_p=0.0)

    @staticmethod
    def _check(cfg: Config, size: int) -> None:
        side = round(math.sqrt(cfg.hole_fraction) * size) if 0 < cfg.hole_fraction < 1 else 0
        # single settings are checked against Config.ranges before any work; here what involves two or the size
        checks = [("overlap", 2 * cfg.overlap < side, f"must leave a hole in a {side} px square"),
                  ("block_min", cfg.block_min <= cfg.block_max, "expected 0 < block_min <= block_max")]
        for name, ok, why in checks:
            if not ok:
                raise SelfSupError(f"--set {name}={getattr(cfg, name)}: {why}")

    def masks(self, n: int, device, mode: str | None = None, generator=None):
        """(region, hole), bool (n, 1, S, S) on ``device``: what is predicted, and what is hidden."""
        cfg = self.cfg
        mask = region_masks(n, self.data.image_size, mode or cfg.mask, cfg.hole_fraction,
                            (cfg.block_min, cfg.block_max), generator).to(device)
        return mask, erode(mask, cfg.overlap)

    def predict(self, x: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, C, H, W) predicted from ``x`` (normalised) with its hole set to the mean (0)."""
        f = feature_map(self.backbone, x.masked_fill(hole, 0.0))
        out = self.decoder(f)
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out

    def _hole_mse(self, pred, x, hole) -> torch.Tensor:
        """Mean squared error on the hidden hole in [0, 1] pixel units (predictions clamped)."""
        err = (denormalize(pred, self.data) - denormalize(x, self.data)) ** 2 * hole
        return err.sum() / (hole.sum() * x.shape[1]).clamp_min(1)

    def adversarial_losses(self, real: torch.Tensor, fake: torch.Tensor):
        """(d_loss, g_loss), non-saturating GAN. d_loss trains D on real vs detached fake; g_loss
        goes through D with detached parameters, so it moves only the generator."""
        bce = F.binary_cross_entropy_with_logits
        lr, lf = self.disc(real), self.disc(fake.detach())
        d_loss = bce(lr, torch.ones_like(lr)) + bce(lf, torch.zeros_like(lf))
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        lg = torch.func.functional_call(self.disc, frozen, (fake,))
        return d_loss, bce(lg, torch.ones_like(lg))

    def forward(self, batch: dict):
        x = make_view(batch["images"], self.view, self.data.mean, self.data.std)          # (B, C, S, S)
        mask, hole = self.masks(x.shape[0], x.device)
        pred = self.predict(x, hole)
        loss = masked_l2(pred, x, loss_weights(mask, hole, self.cfg.overlap_weight))
        logs = {"hole_mse": self._hole_mse(pred.detach(), x, hole)}
        lam = self.cfg.adversarial_weight
        if lam > 0:
            fake = torch.where(mask, pred, x)          # context + prediction on the region
            d_loss, g_loss = self.adversarial_losses(x, fake)
            logs.update(rec=loss.detach(), d_loss=d_loss.detach(), g_adv=g_loss.detach())
            loss = (1 - lam) * loss + lam * g_loss + d_loss
        return loss, logs

    @torch.no_grad()
    def pictures(self, batch: dict):
        x = normalize(to_float(batch["images"][:8]), self.data.mean, self.data.std)
        _, hole = self.masks(x.shape[0], x.device)
        masked = x.masked_fill(hole, 0.0)
        filled = torch.where(hole, self.predict(x, hole), x)
        return {"inpainting": Picture(denormalize(torch.cat([masked, filled, x]), self.data),
                                      ("input (hole masked)", "reconstruction", "original"))}

    @torch.no_grad()
    def reconstruction_error(self, images: torch.Tensor, mask: str | None = None, batch_size: int = 256,
                             generator=None) -> dict[str, float]:
        """Mean squared error on the hidden hole, in [0, 1] pixel units, of the model (eval mode) and
        of two references on the same masks: ``mean_fill`` (dataset mean) and
        ``border_interpolation`` (harmonic fill from the border). ``images``: uint8 (N, C, S, S);
        ``mask`` overrides the configured mode; masks come from ``generator`` or the global RNG."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        sums, count = {"model": 0.0, "mean_fill": 0.0, "border_interpolation": 0.0}, 0.0
        try:
            for chunk in images.split(batch_size):
                x01 = to_float(chunk.to(device))
                _, hole = self.masks(x01.shape[0], device, mode=mask, generator=generator)
                pred = denormalize(self.predict(normalize(x01, self.data.mean, self.data.std), hole), self.data)
                for name, y in (("model", pred), ("mean_fill", fill_mean(x01, hole, self.data.mean)),
                                ("border_interpolation", fill_border_interpolation(x01, hole))):
                    sums[name] += float(((y - x01) ** 2 * hole).sum())
                count += float(hole.sum()) * x01.shape[1]
        finally:
            self.train(was)
        return {k: v / max(count, 1.0) for k, v in sums.items()}
