"""Self-attention maps of a ViT, and how much of that attention falls on the object.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
(`visualize_attention.py`): the last block's attention with the CLS token as the query, per
head, over the patch tokens (``attn[:, :, 0, 1:]``), shown on the patch grid upsampled by the
patch size. The paper judges "the attention follows the object" by eye and by Jaccard against
VOC masks; here ``attention_in_mask`` turns it into one number on ``shapes`` (which knows its
object masks): the share of the CLS attention mass inside the object, beside the object's share
of the image (what uniform attention would give) and beside a randomly initialised ViT of the
same architecture (``attention_vs_random``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelfSupError


def _unwrap(backbone: nn.Module):
    """(timm VisionTransformer, normalise-or-None) of an Encoder, our ViT, or a timm ViT."""
    norm = None
    if hasattr(backbone, "normalize") and hasattr(backbone, "backbone"):   # models.Encoder
        norm, backbone = backbone.normalize, backbone.backbone
    vit = getattr(backbone, "vit", backbone)
    if not (hasattr(vit, "blocks") and hasattr(vit, "patch_embed")):
        raise SelfSupError(f"attention maps need a ViT backbone, got {type(backbone).__name__}")
    return vit, norm


@torch.no_grad()
def cls_attention(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last block's attention of the CLS query over the patch tokens: (B, heads, H/p, W/p).

    ``backbone``: our ``ViT``, a timm ``VisionTransformer``, or an ``Encoder`` around one (then
    ``images`` may be uint8 or [0, 1]; otherwise they must be normalised as in training).
    The softmax runs over all tokens (CLS included), as in DINO, so a map sums to at most 1.
    """
    vit, norm = _unwrap(backbone)
    x = norm(images) if norm is not None else images
    h, w = (s // p for s, p in zip(x.shape[-2:], vit.patch_embed.patch_size))
    t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))                       # (B, N, D), prefix tokens first
    for blk in vit.blocks[:-1]:
        t = blk(t)
    last = vit.blocks[-1]
    a = last.attn
    B, N, _ = t.shape
    qkv = a.qkv(last.norm1(t)).reshape(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
    q, k = a.q_norm(qkv[0]), a.k_norm(qkv[1])                                  # (B, heads, N, hd)
    attn = ((q[:, :, :1] * a.scale) @ k.transpose(-2, -1)).softmax(-1)        # CLS row only: (B, heads, 1, N)
    return attn[:, :, 0, vit.num_prefix_tokens:].reshape(B, a.num_heads, h, w)


@torch.no_grad()
def attention_pictures(backbone: nn.Module, images: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """Rows for a picture grid of 8 per row, in [0, 1]: the input images (B, C, H, W), then one
    row per head with its CLS attention map (stretched to [0, 1] per map, as ``plt.imsave`` in
    DINO's script; nearest-upsampled by the patch size), then the images dimmed where the
    head-averaged attention is low.

    ``images`` uint8 or [0, 1]; ``mean``/``std`` the training normalisation (not needed for an
    ``Encoder``). Returns ((2 + heads) * B, C, H, W)."""
    from ..data.augment import normalize, to_float
    _, norm = _unwrap(backbone)
    x = to_float(images)
    if norm is None:
        if mean is None or std is None:
            raise SelfSupError("attention_pictures needs the normalisation (mean, std) of a bare ViT")
        attn = cls_attention(backbone, normalize(x, mean, std))
    else:
        attn = cls_attention(backbone, x)
    B, C, H, W = x.shape
    heat = F.interpolate(_stretch(attn), size=(H, W), mode="nearest")            # (B, heads, H, W) in [0, 1]
    mean_heat = F.interpolate(_stretch(attn.mean(1, keepdim=True)), size=(H, W), mode="nearest")
    rows = [x] + [heat[:, i:i + 1].expand(B, C, H, W) for i in range(heat.shape[1])] + [x * (0.15 + 0.85 * mean_heat)]
    return torch.cat(rows).clamp(0, 1)


def _stretch(a: torch.Tensor) -> torch.Tensor:
    """Each map (..., h, w) scaled to [0, 1] by its own minimum and maximum."""
    lo, hi = a.amin((-2, -1), keepdim=True), a.amax((-2, -1), keepdim=True)
    return (a - lo) / (hi - lo).clamp_min(1e-12)


def attention_in_mask(attn: torch.Tensor, masks: torch.Tensor) -> dict:
    """How much of the attention lies on the object.

    attn:  (B, heads, h, w) non-negative attention over the patch grid (``cls_attention``);
           each map is renormalised to sum 1 over the patches (the CLS token's own share dropped).
    masks: (B, H, W) or (B, 1, H, W) object masks (bool or [0, 1]), H, W multiples of h, w.

    Each patch counts with the fraction of its pixels inside the object. Returns
    ``in_mask`` (share of the head-averaged attention inside the object, mean over images; equal
    to the mean of the per-head shares), ``per_head`` (that share per head), ``best_head`` (the
    largest of those; one fixed head for all images), ``area_share`` (the object's share of the
    image: what uniform attention gives) and ``lift`` (in_mask / area_share).
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.shape[0] != attn.shape[0]:
        raise SelfSupError(f"{masks.shape[0]} masks for {attn.shape[0]} attention maps")
    h, w = attn.shape[-2:]
    if masks.shape[-2] % h or masks.shape[-1] % w:
        raise SelfSupError(f"mask size {tuple(masks.shape[-2:])} is not a multiple of the patch grid {(h, w)}")
    frac = F.adaptive_avg_pool2d(masks.float()[:, None], (h, w))[:, 0]        # (B, h, w) object fraction per patch
    p = attn.float() / attn.float().sum((-2, -1), keepdim=True).clamp_min(1e-12)
    inside = (p * frac[:, None]).sum((-2, -1))                                  # (B, heads)
    per_head = inside.mean(0)
    in_mask, area = float(inside.mean()), float(frac.mean())
    return {"in_mask": in_mask, "best_head": float(per_head.max()), "per_head": per_head.tolist(),
            "area_share": area, "lift": in_mask / max(area, 1e-12)}


@torch.no_grad()
def attention_report(backbone: nn.Module, images: torch.Tensor, masks: torch.Tensor, mean=None, std=None,
                     batch_size: int = 256) -> dict:
    """``attention_in_mask`` of ``backbone``'s CLS attention over ``images`` (uint8 (N, C, H, W))
    against ``masks`` (N, H, W). ``mean``/``std`` as in ``attention_pictures``."""
    from ..data.augment import normalize, to_float
    _, norm = _unwrap(backbone)
    if norm is None and (mean is None or std is None):
        raise SelfSupError("attention_report needs the normalisation (mean, std) of a bare ViT")
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    maps = []
    try:
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size].to(device))
            x = x if norm is not None else normalize(x, mean, std)
            maps.append(cls_attention(backbone, x).cpu())
    finally:
        backbone.train(was_training)
    return attention_in_mask(torch.cat(maps), masks)


def attention_vs_random(run_dir: str | Path, data: str | None = None, n: int = 500, seed: int = 0) -> dict:
    """The attention-in-mask report of a run folder's ViT and of a randomly initialised ViT of the
    same architecture (seeded), on the first ``n`` test images of ``data`` (default: the run's
    own data; it must know object masks, e.g. ``shapes``).

    Returns ``{"trained": report, "random": report, "data": spec, "n": n}`` (``attention_in_mask``
    reports)."""
    from .. import models
    from ..data.datasets import load_dataset
    from .evaluate import load_backbone, rundir_json
    enc = load_backbone(run_dir)
    data = data or rundir_json(Path(run_dir)).get("data") or "shapes"
    splits = load_dataset(data)
    split = splits.test if splits.test is not None else splits.train
    if split.masks is None:
        raise SelfSupError(f"--data {data}: has no object masks (use shapes)")
    images, masks = split.images[:n], split.masks[:n]
    meta = enc.meta
    torch.manual_seed(seed)
    rand = models.create_backbone(meta["backbone"], in_chans=meta["in_chans"], img_size=meta["img_size"])
    rand = models.Encoder(rand, meta["mean"], meta["std"], input_space=meta.get("input_space", "rgb")).eval()
    return {"trained": attention_report(enc, images, masks), "random": attention_report(rand, images, masks),
            "data": data, "n": len(images)}
