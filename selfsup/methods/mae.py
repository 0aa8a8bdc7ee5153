"""MAE: masked autoencoders, a ViT encoder on the visible patches and a shallow decoder.

He, Chen, Xie, Li, Dollár, Girshick. "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022. https://arxiv.org/abs/2111.06377

Each image (random-resized crop and flip only) is cut into patches; per sample a random
``mask_ratio`` of them (75%) is removed by one ``argsort`` of uniform noise, keeping exactly
``round((1 - ratio) * L)`` tokens. The backbone's own timm parts run on the visible tokens only
(patch embedding, fixed 2-D sin-cos position embedding, CLS token, blocks, final norm): mask tokens
never enter the encoder. A narrower, shallow decoder (its own sin-cos positions, one shared learned
mask token, timm blocks) predicts the pixels of every patch from the encoded visible tokens plus
mask tokens; the loss is the mean squared error over the masked patches only, each target patch
normalised by its own mean and variance (``norm_pix_loss``, on by default).

Small-image departures: decoder 128 wide and 2 blocks deep (the paper 512 x 8 at 224 px: its
ablation shows fine-tuning insensitive to depth); AdamW betas (0.9, 0.95) and weight decay 0.05 as
the paper, a learning rate for short runs at batch 128 (measured: benchmarks/tune.py). MAE's
primary criterion is fine-tuning (``selfsup eval finetune``); kNN on MAE features is known to be weak.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block

from ..data.augment import ViewConfig, make_view, normalize, to_float
from ..errors import SelfSupError
from ..models import is_vit, plain_attention_on_cpu
from .base import DataInfo, Method, Picture, denormalize


@dataclass
class Config:
    mask_ratio: float = 0.75       # fraction of patches removed per sample (the paper's 75%)
    norm_pix_loss: bool = True     # targets: each patch normalised by its own mean and variance (paper: on)
    decoder_dim: int = 128         # decoder width (512 in the paper)
    decoder_depth: int = 2         # decoder blocks (8 in the paper; fine-tuning barely depends on it)
    decoder_heads: int = 4
    crop_min: float = 0.2          # random-resized-crop minimum area (the paper 0.2), plus flips; no colour
    flip_p: float = 0.5

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "mask_ratio": "(0, 1)", "decoder_dim": ">= 1", "decoder_depth": ">= 1", "decoder_heads": ">= 1",
        "crop_min": "(0, 1]", "flip_p": "[0, 1]",
    }


# ----------------------------------------------------------------------------- patches and masks

def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C) patches in raster order, each flattened row by row, channel last."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise SelfSupError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    h, w = H // p, W // p
    return x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p * p * C)


def unpatchify(patches: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for square images: (B, L, p*p*C) -> (B, C, H, W)."""
    B, L, _ = patches.shape
    h = int(round(L ** 0.5))
    if h * h != L:
        raise SelfSupError(f"{L} patches do not form a square grid")
    return patches.reshape(B, h, h, p, p, channels).permute(0, 5, 1, 3, 2, 4).reshape(B, channels, h * p, h * p)


def random_masking(n: int, length: int, ratio: float, device=None, generator=None):
    """Per-sample random masking from one argsort of uniform noise.

    Returns (keep (n, K) indices of the visible patches, in shuffled order; mask (n, L) with 1 =
    removed, in the original order; restore (n, L) with ``shuffled.gather(restore) == original``),
    where K = round((1 - ratio) * L), at least 1."""
    keep_n = max(1, int(round((1 - ratio) * length)))
    noise = (torch.rand(n, length, generator=generator).to(device) if generator is not None
             else torch.rand(n, length, device=device))
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep_n] = 0
    return shuffle[:, :keep_n], mask.gather(1, restore), restore


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """MAE's loss: per-patch MSE (over the patch's values) averaged over the masked patches only.
    pred/target (B, L, D), mask (B, L) with 1 = removed."""
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def normalize_patches(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
    return (t - mean) / (var + eps).sqrt()


def infill_from_visible(images: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """A trivial infill: each hidden pixel gets the average of the visible pixels in the smallest
    square window around it that holds any (normalised convolution with growing windows).
    images (B, C, H, W) float; pixel_mask (B, 1, H, W), 1 = hidden."""
    visible = 1 - pixel_mask
    out = images * visible
    todo = pixel_mask.bool()
    k = 3
    while todo.any() and k <= 2 * max(images.shape[-2:]) + 1:
        num = F.avg_pool2d(images * visible, k, stride=1, padding=k // 2, count_include_pad=False)
        den = F.avg_pool2d(visible, k, stride=1, padding=k // 2, count_include_pad=False)
        ok = todo & (den > 0)
        out = torch.where(ok, num / den.clamp_min(1e-12), out)
        todo = todo & ~ok
        k += 2
    return out


class MAE(Method):
    Config = Config
    train_defaults = dict(backbone="vit_micro", optimizer="adamw", lr=2e-3, weight_decay=0.05, beta2=0.95,
                          batch_size=128, epochs=50, warmup_epochs=1.0)

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        if not is_vit(backbone):
            raise SelfSupError("mae needs a ViT backbone (--backbone vit_micro, vit_tiny, ...): the encoder runs on "
                               "the visible patches only")
        if cfg.decoder_dim % cfg.decoder_heads:
            raise SelfSupError(f"--set decoder_heads={cfg.decoder_heads}: must divide decoder_dim ({cfg.decoder_dim})")
        v = backbone.vit
        self.p = backbone.patch_size
        if data.image_size % self.p:
            raise SelfSupError(f"mae: image size {data.image_size} is not a multiple of the patch size {self.p}")
        self.grid = data.image_size // self.p
        D, Dd = backbone.embed_dim, cfg.decoder_dim
        # the encoder's position embedding: fixed 2-D sin-cos (CLS position zero), written into the backbone
        pos = build_sincos2d_pos_embed([self.grid, self.grid], D)
        if v.pos_embed is None or v.pos_embed.shape[1] != 1 + self.grid ** 2:
            raise SelfSupError(f"mae: the backbone's position embedding does not fit a {self.grid}x{self.grid} grid")
        v.pos_embed.data.copy_(torch.cat([torch.zeros(1, D), pos])[None])
        v.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.register_buffer("decoder_pos", torch.cat([torch.zeros(1, Dd), build_sincos2d_pos_embed([self.grid] * 2, Dd)])[None],
                             persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(Dd, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(cfg.decoder_depth)])
        plain_attention_on_cpu(self.decoder_blocks)
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.decoder_pred = nn.Linear(Dd, self.p * self.p * data.channels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.view = ViewConfig(size=data.image_size, scale=(cfg.crop_min, 1.0), flip_p=cfg.flip_p, jitter_p=0.0,
                               gray_p=0.0, blur_p=0.0)

    # ---------------------------------------------------------------- the model
    def encode(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Encoder on the visible patches only: (B, 1 + K, D) normed tokens, CLS first."""
        v = self.backbone.vit
        t = v.patch_embed(x)
        t = t.flatten(1, 2) if t.dim() == 4 else t                       # (B, L, D)
        t = t + v.pos_embed[:, 1:]
        t = t.gather(1, keep[..., None].expand(-1, -1, t.shape[-1]))      # (B, K, D): visible tokens only
        cls = (v.cls_token + v.pos_embed[:, :1]).expand(len(t), -1, -1)
        t = v.norm_pre(torch.cat([cls, t], dim=1))
        return v.norm(v.blocks(t))

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, D) -> predicted patches (B, L, p*p*C), in the original order."""
        t = self.decoder_embed(latent)
        B, L = restore.shape
        K = t.shape[1] - 1
        shuffled = torch.cat([t[:, 1:], self.mask_token.expand(B, L - K, -1)], dim=1)
        t = torch.cat([t[:, :1], shuffled.gather(1, restore[..., None].expand(-1, -1, t.shape[-1]))], dim=1)
        t = self.decoder_norm(self.decoder_blocks(t + self.decoder_pos))
        return self.decoder_pred(t[:, 1:])

    def reconstruct(self, x: torch.Tensor, generator=None):
        """(pred (B, L, p*p*C), target patches of ``x`` (B, L, p*p*C), mask (B, L) with 1 = removed)."""
        keep, mask, restore = random_masking(len(x), self.grid ** 2, self.cfg.mask_ratio, x.device, generator)
        pred = self.decode(self.encode(x, keep), restore)
        return pred, patchify(x, self.p), mask

    def forward(self, batch: dict):
        x = make_view(batch["images"], self.view, self.data.mean, self.data.std)
        pred, target, mask = self.reconstruct(x)
        return masked_mse(pred, target, mask, self.cfg.norm_pix_loss), {}

    # ---------------------------------------------------------------- evidence
    def _display(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Predicted patches in the target's (normalised-image) space, for display: with
        norm_pix_loss each patch takes the mean and std of the *original* patch (information the
        model never had; display only)."""
        if not self.cfg.norm_pix_loss:
            return pred
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        return pred * (var + 1e-6).sqrt() + mean

    @torch.no_grad()
    def pictures(self, batch: dict):
        """Three rows of 8: masked input (hidden patches grey), the reconstruction pasted into the
        visible patches, the original. With norm_pix_loss the predicted patches are shown with each
        original patch's mean and std (display only: the model never sees them)."""
        x = make_view(batch["images"][:8], self.view, self.data.mean, self.data.std)
        pred, target, mask = self.reconstruct(x)
        m = mask[..., None]
        C = self.data.channels
        masked = unpatchify(target * (1 - m), self.p, C)
        filled = unpatchify(target * (1 - m) + self._display(pred, target) * m, self.p, C)
        return {"reconstruction": Picture(denormalize(torch.cat([masked, filled, x]), self.data),
                                          ("input (masked)", "reconstruction", "original view"))}

    @torch.no_grad()
    def reconstruction_error(self, images: torch.Tensor, batch_size: int = 256, generator=None) -> dict:
        """Masked-patch error on uint8 ``images`` (no augmentation, seeded masks) of the model and of
        a trivial infill from the visible pixels (:func:`infill_from_visible`), both in the space of
        the loss: per-patch-normalised pixels when ``norm_pix_loss`` (each infill patch normalised by
        its own statistics, no peeking; predicting each patch's mean scores 1.0 there), else the
        normalised image; and of each hidden patch filled with its own mean ("patch_mean": a
        reference that peeks at the patch's mean, which neither the model nor the infill gets)."""
        was = self.training
        self.eval()
        tot = {"model": 0.0, "infill": 0.0, "patch_mean": 0.0}
        n = 0
        try:
            for i in range(0, len(images), batch_size):
                dev = next(self.parameters()).device
                x = normalize(to_float(images[i:i + batch_size].to(dev)), self.data.mean, self.data.std)
                pred, target, mask = self.reconstruct(x, generator)
                pix = unpatchify(mask[..., None].expand(-1, -1, target.shape[-1]), self.p, self.data.channels)[:, :1]
                infill = patchify(infill_from_visible(x, pix), self.p)
                if self.cfg.norm_pix_loss:
                    infill = normalize_patches(infill)
                tot["model"] += float(masked_mse(pred, target, mask, self.cfg.norm_pix_loss)) * len(x)
                tot["infill"] += float(masked_mse(infill, target, mask, self.cfg.norm_pix_loss)) * len(x)
                own_mean = torch.zeros_like(target) if self.cfg.norm_pix_loss else target.mean(-1, keepdim=True).expand_as(target)
                tot["patch_mean"] += float(masked_mse(own_mean, target, mask, self.cfg.norm_pix_loss)) * len(x)
                n += len(x)
        finally:
            self.train(was)
        space = "per-patch-normalised pixels" if self.cfg.norm_pix_loss else "normalised pixels"
        return {"metric": f"masked-patch MSE ({space})", **{k: v / n for k, v in tot.items()}}
