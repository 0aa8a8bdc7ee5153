"""Colorization: predict the colour (Lab ab) of an image from its lightness (L).

Zhang, Isola, Efros. "Colorful Image Colorization", ECCV 2016. https://arxiv.org/abs/1603.08511

The backbone sees only L (``input_space = "lab_l"``: one channel, ``(L - 50) / 50``); a small
upsampling decoder on its last feature map predicts, per pixel at 1/``out_stride`` resolution,
a distribution over the in-gamut ab bins of a 10-unit grid. The target is soft-encoded (the k
nearest bins, Gaussian weights, sigma 5), each pixel's cross-entropy is weighted by the
rebalancing weight of its nearest bin, w ~ ((1 - lambda) p + lambda / Q)^-1 with p the smoothed
empirical bin distribution of the training data (``prepare``), and grey images are masked out.
Pictures decode with the annealed mean (T = 0.38).

Departures from the paper: the bins are computed here from the sRGB gamut (262 cells at grid 10;
the paper's ``pts_in_hull.npy`` has 313, from a looser criterion it does not spell out); the
prior is estimated from ``prepare_samples`` training images at the target resolution, not from
ImageNet; the decoder is a small generic upsampler (1x1 conv, then x2 bilinear + 3x3 conv per
octave, then 1x1 to Q) rather than dilated AlexNet/VGG layers; the weight multiplies the loss in
forward rather than only the gradient (the same gradient); ``loss="regression"`` is an L1 on
ab / 110 in place of the paper's L2 baseline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import resized_crop, sample_crop_boxes, to_float
from ..data.color import lab_to_rgb, rgb_to_lab
from ..errors import SelfSupError
from ..models import feature_map
from .base import DataInfo, Method, Picture

AB_SCALE = 110.0   # |a|, |b| <= ~110 for sRGB: regression predicts ab / AB_SCALE


@dataclass
class Config:
    loss: str = "classification"  # classification (Zhang's rebalanced soft-encoded CE) | regression (L1 on ab)
    out_stride: int = 4           # predict ab at 1/out_stride of the input size, as the paper (2 doubles the step time)
    decoder_dim: int = 64         # channels of the upsampling decoder
    grid: float = 10.0            # side of an ab bin (paper: 10)
    soft_k: int = 10              # nearest bins in the soft target (official code 10; the paper's text says 5)
    sigma: float = 5.0            # Gaussian width of the soft encoding and of the prior smoothing, in ab units
    rebalance: float = 0.5        # lambda: mix of prior and uniform in the weights; 1 = no rebalancing
    temperature: float = 0.38     # annealed-mean decoding for pictures (1 = mean, -> 0 = mode)
    gray_threshold: float = 5.0   # images with every |a|, |b| <= this are grey and left out of the loss
    crop_min: float = 0.5         # random-resized-crop minimum area fraction (1 = no crop)
    flip_p: float = 0.5

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "loss": ("classification", "regression"), "out_stride": ">= 1", "decoder_dim": ">= 1", "grid": "> 0",
        "soft_k": ">= 1", "sigma": "> 0", "rebalance": "[0, 1]", "temperature": "> 0", "gray_threshold": ">= 0",
        "crop_min": "(0, 1]", "flip_p": "[0, 1]",
    }


@lru_cache
def _gamut_bins(step: float, n: int) -> torch.Tensor:
    t = torch.linspace(0, 1, n)
    u, v = torch.meshgrid(t, t, indexing="ij")
    # the ab footprint of the RGB cube (over all L) is the footprint of its surface: sample the 6 faces
    faces = [torch.stack([u, v][:c] + [torch.full_like(u, side)] + [u, v][c:]) for c in range(3) for side in (0.0, 1.0)]
    ab = rgb_to_lab(torch.cat(faces, 1)[None].double())[0, 1:].flatten(1)      # (2, 6 n^2)
    cell = torch.round(ab / step).long() + 64                                     # cell of centre step * (i - 64)
    key = torch.unique(cell[0] * 128 + cell[1])                                  # sorted: a-major, then b
    return torch.stack([key // 128 - 64, key % 128 - 64], 1).float() * step


def gamut_bins(step: float = 10.0) -> torch.Tensor:
    """Centres (Q, 2) of the ab grid cells (side ``step``, centred on multiples of it) that contain
    some sRGB colour at some L; Q = 262 at step 10. Computed from 6 x 512^2 colours on the faces of
    the RGB cube; deterministic."""
    return _gamut_bins(float(step), 512).clone()


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float) -> torch.Tensor:
    """Annealed-mean decoding: logits (B, Q, h, w) -> ab (B, 2, h, w) = E[bins] under softmax(logits / T),
    which is the paper's f_T(z) = exp(log z / T) / sum exp(log z / T) of z = softmax(logits)."""
    return torch.einsum("bqhw,qc->bchw", torch.softmax(logits / temperature, 1), bins)


class Colorization(Method):
    Config = Config
    input_space = "lab_l"
    prepare_samples = 2000
    # not tuned: lr 2e-3 and 5e-3 did alike in a 50 s check on shapes (resnet18_quarter, batch 64)
    train_defaults = dict(optimizer="adamw", lr=2e-3, weight_decay=1e-4, batch_size=128, epochs=5, warmup_epochs=0.1)

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        if data.channels != 3:
            raise SelfSupError(f"colorization needs colour (RGB) images, but --data has {data.channels} channel(s)")
        if not 1 <= cfg.out_stride <= data.image_size:
            raise SelfSupError(f"--set out_stride={cfg.out_stride}: expected 1 to the image size ({data.image_size})")
        super().__init__(backbone, cfg, data)
        bins = gamut_bins(cfg.grid)
        q = len(bins)
        self.register_buffer("bins", bins)                          # (Q, 2) ab centres
        self.register_buffer("prior", torch.full((q,), 1.0 / q))    # p~: smoothed empirical bin distribution
        self.register_buffer("weights", torch.ones(q))              # rebalancing weight per bin; sum(p~ w) = 1

        # find the backbone's output grid with one dummy pass (eval mode: BN statistics untouched)
        was_training, p = backbone.training, next(backbone.parameters())
        backbone.eval()
        with torch.no_grad():
            f = feature_map(self.backbone, torch.zeros(1, 1, data.image_size, data.image_size, device=p.device, dtype=p.dtype))
        backbone.train(was_training)
        d = cfg.decoder_dim
        layers = [nn.Conv2d(f.shape[1], d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)]
        for _ in range(max(0, round(math.log2(data.image_size // cfg.out_stride / f.shape[-1])))):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(d, d, 3, padding=1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(d, q if cfg.loss == "classification" else 2, 1))
        self.decoder = nn.Sequential(*layers)

    # ------------------------------------------------------------------ pieces
    def predict(self, lightness: torch.Tensor) -> torch.Tensor:
        """Input (B, 1, S, S) -> logits (B, Q, S/out_stride, S/out_stride), or ab / 110 (B, 2, ...) for regression."""
        out = self.decoder(feature_map(self.backbone, lightness))
        size = lightness.shape[-1] // self.cfg.out_stride
        if out.shape[-1] != size:    # sizes that are not a power-of-2 multiple of the feature grid
            out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)
        return out

    def targets(self, lab: torch.Tensor):
        """Lab (B, 3, S, S) -> target ab per output pixel (P, 2) (area-pooled) and its non-grey mask (P,)."""
        ab = lab[:, 1:]
        colourful = ab.abs().flatten(1).amax(1) > self.cfg.gray_threshold     # (B,)  Zhang's NonGrayMask
        if self.cfg.out_stride > 1:
            ab = F.avg_pool2d(ab, self.cfg.out_stride)
        B, _, h, w = ab.shape
        return ab.permute(0, 2, 3, 1).reshape(-1, 2), colourful.repeat_interleave(h * w)

    def soft_encode(self, ab: torch.Tensor):
        """ab (P, 2) -> indices (P, k) of the k nearest bins, nearest first, and Gaussian weights (P, k) summing to 1."""
        ab = ab.float()
        # elementwise rather than a matmul: exact, and autocast cannot turn it into bf16
        d2 = (ab[:, :1] - self.bins[:, 0]) ** 2 + (ab[:, 1:] - self.bins[:, 1]) ** 2          # (P, Q)
        d2, idx = d2.topk(min(self.cfg.soft_k, len(self.bins)), dim=1, largest=False)
        return idx, torch.softmax(-d2 / (2 * self.cfg.sigma ** 2), 1)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random resized crop + flip of float RGB (B, 3, H, W) -> (B, 3, S, S), before the Lab split."""
        B, _, H, W = x.shape
        if self.cfg.crop_min < 1:
            boxes = sample_crop_boxes(B, H, W, scale=(self.cfg.crop_min, 1.0))
        else:
            boxes = torch.tensor([0.0, 0.0, H, W]).expand(B, 4)
        return resized_crop(x, boxes, self.data.image_size, torch.rand(B) < self.cfg.flip_p)

    # ------------------------------------------------------------------ the contract
    @torch.no_grad()
    def prepare(self, images: torch.Tensor) -> None:
        """Empirical distribution of the nearest bin over the non-grey target pixels of ``images``
        (uint8 (N, 3, H, W)), smoothed with a Gaussian (sigma) over the ab plane, then the weights."""
        q, dev = len(self.bins), self.bins.device
        counts = torch.zeros(q, device=dev)
        for chunk in images.split(64):
            ab, keep = self.targets(rgb_to_lab(to_float(chunk.to(dev))))
            counts += torch.bincount(self.soft_encode(ab[keep])[0][:, 0], minlength=q)
        if counts.sum() == 0:     # no colour at all: keep the uniform weights
            return
        # mass of bin r spread over the in-gamut bins q by exp(-|c_q - c_r|^2 / 2 sigma^2)
        kernel = torch.exp(-torch.cdist(self.bins, self.bins) ** 2 / (2 * self.cfg.sigma ** 2))
        prior = (kernel / kernel.sum(0)) @ (counts / counts.sum())
        lam = self.cfg.rebalance
        w = 1 / ((1 - lam) * prior + lam / q)
        self.prior.copy_(prior)
        self.weights.copy_(w / (prior * w).sum())

    def forward(self, batch: dict):
        lab = rgb_to_lab(self.augment(to_float(batch["images"])))        # (B, 3, S, S)
        out = self.predict((lab[:, :1] - 50) / 50)                       # = lightness_input of the crop
        ab, keep = self.targets(lab)                                      # (P, 2), (P,)
        keep = keep.float()
        n = keep.sum().clamp(min=1)
        out = out.permute(0, 2, 3, 1).reshape(len(ab), -1)              # (P, Q) or (P, 2)
        idx, soft = self.soft_encode(ab)
        if self.cfg.loss == "classification":
            ce = -(F.log_softmax(out, 1).gather(1, idx) * soft).sum(1)  # (P,) CE against the soft target
            loss = (ce * self.weights[idx[:, 0]] * keep).sum() / n       # weighted by the nearest bin's w
            with torch.no_grad():
                pred_bin = out.argmax(1)
                pred_ab = torch.softmax(out / self.cfg.temperature, 1) @ self.bins
        else:
            loss = ((out - ab / AB_SCALE).abs().mean(1) * keep).sum() / n
            with torch.no_grad():
                pred_ab = out * AB_SCALE
                pred_bin = self.soft_encode(pred_ab)[0][:, 0]
        acc = ((pred_bin == idx[:, 0]).float() * keep).sum() / n
        ab_l1 = ((pred_ab - ab).abs().mean(1) * keep).sum() / n
        return loss, {"pretext_acc": acc.detach(), "ab_l1": ab_l1.detach()}

    @torch.no_grad()
    def pictures(self, batch: dict):
        """Three rows of 8: the grey input, the prediction (annealed mean at the input's L), the original."""
        x = to_float(batch["images"][:8])
        lab = rgb_to_lab(x)
        L = lab[:, :1]
        out = self.predict((L - 50) / 50)
        ab = annealed_mean(out, self.bins, self.cfg.temperature) if self.cfg.loss == "classification" else out * AB_SCALE
        ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        rows = [lab_to_rgb(torch.cat([L, torch.zeros_like(ab)], 1)), lab_to_rgb(torch.cat([L, ab], 1)), x]
        pad = x.new_ones(8 - len(x), *x.shape[1:])                      # keep rows aligned when fewer than 8
        return {"colorization": Picture(torch.cat([torch.cat([r, pad]) for r in rows]),
                                        ("grey input", "prediction", "original"))}

    @torch.no_grad()
    def colorization_error(self, images: torch.Tensor, batch_size: int = 256) -> dict:
        """Mean |ab| error (Lab units) on the colourful target pixels of uint8 RGB ``images``, without
        augmentation, in eval mode: the model (annealed mean, or the regression output) beside two
        trivial references, predicting grey (ab = 0) and the training prior's most common bin."""
        was = self.training
        self.eval()
        dev = self.bins.device
        mode_ab = self.bins[self.prior.argmax()] if self.prior.sum() > 0 else self.bins.new_zeros(2)
        sums, n = {"model": 0.0, "grey": 0.0, "prior mode": 0.0}, 0.0
        try:
            for chunk in images.split(batch_size):
                lab = rgb_to_lab(to_float(chunk.to(dev)))
                out = self.predict((lab[:, :1] - 50) / 50)
                ab, keep = self.targets(lab)
                out = out.permute(0, 2, 3, 1).reshape(len(ab), -1)
                pred = (torch.softmax(out / self.cfg.temperature, 1) @ self.bins if self.cfg.loss == "classification"
                        else out * AB_SCALE)
                for k, p in (("model", pred), ("grey", torch.zeros_like(ab)), ("prior mode", mode_ab.expand_as(ab))):
                    sums[k] += float(((p - ab).abs().mean(1) * keep).sum())
                n += float(keep.sum())
        finally:
            self.train(was)
        e = {k: v / max(n, 1.0) for k, v in sums.items()}
        return {"model": e["model"], "reference": {"grey": e["grey"], "prior mode": e["prior mode"]}}
