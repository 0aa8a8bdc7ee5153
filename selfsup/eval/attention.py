"""How much of a ViT's self-attention falls on the object (the maps themselves: ``selfsup.models.attention``).

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
from ..models.attention import _unwrap, attention_pictures, cls_attention  # noqa: F401  (attention_pictures re-exported)


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


def with_head_chosen(report: dict, choice: dict) -> dict:
    """``report`` (on test images) plus the head that ``choice`` (the same network on other images,
    e.g. training images) ranks first: ``chosen_head`` (its index), ``chosen_head_in_mask`` (its
    share on ``report``'s images) and ``chosen_head_lift`` (that over the area share). Unlike
    ``best_head``, which is the maximum over the scored images themselves, this head is picked
    without looking at them."""
    head = max(range(len(choice["per_head"])), key=lambda i: choice["per_head"][i])
    share = report["per_head"][head]
    return {**report, "chosen_head": head, "chosen_head_in_mask": share,
            "chosen_head_lift": share / max(report["area_share"], 1e-12)}


def attention_vs_random(run_dir: str | Path, data: str | None = None, n: int = 500, seed: int = 0) -> dict:
    """The attention-in-mask report of a run folder's ViT and of a randomly initialised ViT of the
    same architecture (seeded), on the first ``n`` test images of ``data`` (default: the run's
    own data; it must know object masks, e.g. ``shapes``). Each report also names the head that
    ranks first on the last ``n`` training images and that head's share on the test images
    (``with_head_chosen``).

    Returns ``{"trained": report, "random": report, "data": spec, "n": n}`` (``attention_in_mask``
    reports)."""
    from .. import models
    from ..data.datasets import load_dataset
    from ..runs import load_backbone, run_config
    enc = load_backbone(run_dir)
    data = data or run_config(run_dir).get("data") or "shapes"
    splits = load_dataset(data)
    split = splits.test if splits.test is not None else splits.train
    if split.masks is None:
        raise SelfSupError(f"--data {data}: has no object masks (use shapes)")
    images, masks = split.images[:n], split.masks[:n]
    # the head is chosen on training images: the last n, or all but the test ones when train is also the test split
    pool = splits.train
    start = max(n, len(pool.images) - n) if split is pool else max(0, len(pool.images) - n)
    choice_images, choice_masks = pool.images[start:], (pool.masks[start:] if pool.masks is not None else None)
    meta = enc.meta
    torch.manual_seed(seed)
    rand = models.create_backbone(meta["backbone"], in_chans=meta["in_chans"], img_size=meta["img_size"])
    rand = models.Encoder(rand, meta["mean"], meta["std"], input_space=meta.get("input_space", "rgb")).eval()
    out = {}
    for key, net in (("trained", enc), ("random", rand)):
        rep = attention_report(net, images, masks)
        if choice_masks is not None and len(choice_images):
            rep = with_head_chosen(rep, attention_report(net, choice_images, choice_masks))
        out[key] = rep
    return {**out, "data": data, "n": len(images), "head_chosen_on": len(choice_images)}
