"""Vision Transformers for small images, built from timm's ``VisionTransformer``.

Patch size 4 by default, so a 28 or 32 px image gives 49 or 64 tokens plus a CLS token.
``dynamic_img_size`` lets the same weights take crops of other sizes (multi-crop), with the
position embeddings interpolated by timm.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SelfSupError
from timm.models.vision_transformer import VisionTransformer


def _choose_attention(module: nn.Module, args) -> None:
    module.fused_attn = args[0].device.type != "cpu"


def plain_attention_on_cpu(module: nn.Module) -> nn.Module:
    """Make every timm attention layer in ``module`` pick its kernel by the input's device at each
    call: torch's fused ``scaled_dot_product_attention`` off the CPU, timm's plain matmul-softmax
    path on it. On the CPU, at our token counts (17-65), the fused kernel's backward is the slow
    part of a ViT step: with the plain path MAE's ``vit_micro`` step runs as fast in fp32 and about
    2x as fast in bf16 autocast (BENCHMARKS.md, vit-bf16). Same arithmetic either way."""
    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.register_forward_pre_hook(_choose_attention)
    return module


class ViT(nn.Module):
    """``forward_features`` gives the normed tokens (B, 1 + L, D), CLS first; ``forward`` the
    pooled embedding (B, D): the CLS token, or the mean of the patch tokens with ``pool="mean"``."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int = 4, img_size: int = 32,
                 in_chans: int = 3, pool: str = "cls", drop_path_rate: float = 0.0):
        super().__init__()
        if img_size % patch_size:
            raise SelfSupError(f"a ViT with {patch_size}-pixel patches needs an image side that is a multiple of "
                               f"{patch_size}; got {img_size} (choose another backbone, or resize the images)")
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
            dynamic_img_size=True, drop_path_rate=drop_path_rate,
        )
        plain_attention_on_cpu(self.vit)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_stages = depth
        self.pool_mode = pool

    def forward_features(self, x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        """Tokens after block ``stage`` (1-based; default all blocks, then the final norm): (B, 1 + L, D)."""
        if stage is None or stage >= len(self.vit.blocks):
            return self.vit.forward_features(x)
        v = self.vit
        x = v.norm_pre(v._pos_embed(v.patch_embed(x)))
        for blk in v.blocks[:stage]:
            x = blk(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tokens after every block, in one pass; the last one normed (as ``forward_features``)."""
        v = self.vit
        x, out = v.norm_pre(v._pos_embed(v.patch_embed(x))), []
        for blk in v.blocks:
            x = blk(x)
            out.append(x)
        out[-1] = v.norm(out[-1])
        return out

    def pool(self, tokens: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        mode = mode or self.pool_mode
        if mode not in ("cls", "mean"):
            raise SelfSupError(f"--pool {mode}: expected cls or mean for a ViT")
        return tokens[:, 1:].mean(dim=1) if mode == "mean" else tokens[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
