"""Frozen features: the encoder in eval mode (batch-norm uses its running statistics), no gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SelfSupError
from ..progress import bar


GRID_DIMS = 512  # "grid" pooling keeps at most this many numbers of a feature map (the linear probe is memory-bound on wide features)


def pool_map(feats: torch.Tensor, pool: str | None) -> torch.Tensor:
    """A ResNet feature map (B, C, h, w) as a vector: global average ("avg", the default) or
    average-pooled to an s x s grid with C*s*s <= GRID_DIMS ("grid", for earlier stages, whose
    global average throws away where things are; cf. the resized conv features of Zhang et al.)."""
    if pool in (None, "avg"):
        return feats.mean(dim=(2, 3))
    if pool != "grid":
        raise SelfSupError(f"--pool {pool}: expected avg or grid for a convolutional backbone")
    s = max(1, min(int((GRID_DIMS / feats.shape[1]) ** 0.5), feats.shape[2], feats.shape[3]))
    return F.adaptive_avg_pool2d(feats, s).flatten(1)


def candidates(encoder: nn.Module) -> list[tuple[int | None, str | None]]:
    """The (layer, pool) choices ``layer="auto"`` picks from: every earlier stage (ResNet, grid-
    pooled) or block (ViT, its own pooling), and the final embedding (None, None)."""
    bb = encoder.backbone
    pool = None if hasattr(bb, "vit") else "grid"
    n = bb.num_stages
    return [(i, pool) for i in range(1, n)] + [(None, None)]


def _pool(backbone: nn.Module, f: torch.Tensor, layer: int | None, pool: str | None) -> torch.Tensor:
    """One stage's output as vectors: the backbone's own pooling for the final embedding, else
    ``pool`` over ViT tokens (3-D) or a ResNet map (4-D, :func:`pool_map`)."""
    if layer is None and pool is None:
        return backbone.pool(f)
    return backbone.pool(f, pool) if f.dim() == 3 else pool_map(f, pool)


@torch.no_grad()
def extract_many(encoder: nn.Module, images: torch.Tensor, choices, batch_size: int = 512,
                 device: str | torch.device = "cpu", progress: bool | None = None, desc: str = "features") -> dict:
    """{(layer, pool): (N, D) features} for several choices from one pass per batch. ``progress``:
    a bar of images done, with images/s (None: when stderr is a terminal; see selfsup.progress)."""
    was_training = encoder.training
    encoder.eval().to(device)
    bb = encoder.backbone
    for layer, _ in choices:
        if layer is not None and not 1 <= layer <= bb.num_stages:
            raise SelfSupError(f"--layer {layer}: this backbone has stages 1 to {bb.num_stages}")
    out = {c: [] for c in choices}
    shown = bar(total=len(images), progress=progress, desc=desc, unit="img")
    try:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            stages = bb.forward_stages(encoder.normalize(x.to(device)))
            for layer, pool in choices:
                f = stages[(layer or len(stages)) - 1]
                out[(layer, pool)].append(_pool(bb, f, layer, pool).float().cpu())
            shown.update(len(x))
    finally:
        shown.close()
        encoder.train(was_training)
    return {c: torch.cat(v) for c, v in out.items()}


@torch.no_grad()
def extract(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu",
            layer: int | tuple[int, ...] | None = None, pool: str | None = None, progress: bool | None = None,
            desc: str = "features") -> torch.Tensor:
    """Embeddings (N, D) of uint8 images (N, C, H, W).

    ``encoder`` is a :class:`selfsup.models.Encoder`. ``layer`` picks an earlier stage (ResNet
    stage or ViT block, 1-based), or a tuple of them: their features side by side, each pooled by
    ``pool``; ``pool`` is "avg" | "grid" for a ResNet map (:func:`pool_map`) or "cls" | "mean" for
    a ViT's tokens. The encoder's train/eval mode is restored afterwards.
    ``progress``: a bar of images done and images/s on stderr (None: only when it is a terminal).
    """
    choices = [(x, pool) for x in layer] if isinstance(layer, tuple) else [(layer, pool)]
    feats = extract_many(encoder, images, choices, batch_size, device, progress, desc)
    return feats[choices[0]] if len(choices) == 1 else torch.cat([feats[c] for c in choices], 1)


def raw_pixels(images, mean, std, batch_size: int = 4096, progress: bool | None = None,
               desc: str = "pixels") -> torch.Tensor:
    """The raw-pixel baseline's features: normalised pixels, flattened (N, C*H*W). ``images`` is
    uint8 (N, C, H, W) or a streamed split's images (read a batch at a time)."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    out = []
    with bar(total=len(images), progress=progress, desc=desc, unit="img") as shown:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            out.append(((x.float().div(255) - m) / s).flatten(1))
            shown.update(len(x))
    return torch.cat(out)
