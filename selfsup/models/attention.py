"""Self-attention maps of a ViT: the last block's CLS attention over the patch tokens, and picture
rows of it (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
``visualize_attention.py``). DINO's pictures draw them; ``selfsup.eval.attention`` scores them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import normalize, to_float
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
