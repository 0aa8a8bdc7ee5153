"""Frozen features: the encoder in eval mode (batch-norm uses its running statistics), no gradient."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def extract(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu",
            layer: int | None = None, pool: str | None = None) -> torch.Tensor:
    """Embeddings (N, D) of uint8 images (N, C, H, W).

    ``encoder`` is a :class:`selfsup.models.Encoder`. ``layer`` picks an earlier stage (ResNet
    stage or ViT block, 1-based), globally average-pooled; ``pool`` ("cls" | "mean") overrides a
    ViT's pooling. The encoder's train/eval mode is restored afterwards.
    """
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            if layer is None and pool is None:
                f = encoder(x)
            else:
                feats = encoder.forward_features(x, stage=layer)
                f = encoder.backbone.pool(feats, pool) if feats.dim() == 3 else feats.mean(dim=(2, 3))
            out.append(f.float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out)


def raw_pixels(images: torch.Tensor, mean, std) -> torch.Tensor:
    """The raw-pixel baseline's features: normalised pixels, flattened (N, C*H*W)."""
    x = images.float().div(255)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x - m) / s).flatten(1)
