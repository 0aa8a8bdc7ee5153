"""MoCo v2 (a momentum key encoder and a queue of negatives) and MoCo v3 (no queue, a predictor).

He, Fan, Wu, Xie, Girshick. "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020. https://arxiv.org/abs/1911.05722
Chen, Fan, Girshick, He. "Improved Baselines with Momentum Contrastive Learning", 2020.
https://arxiv.org/abs/2003.04297
Chen, Xie, He. "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021.
https://arxiv.org/abs/2104.02057

Both: a query encoder (backbone + projector, trained) and a key encoder, its exponential moving
average (no gradient, updated in ``after_step`` outside DDP), on two augmented views.

v2 (``moco``): each query must find its key among the negatives of a FIFO queue, InfoNCE with
logits ``[q.k+, q.queue] / T`` and label 0. The keys of every process are gathered, in rank
order, before they are enqueued, so every process holds the same queue. Batch-norm can leak
which key is the positive (it is the only key computed with this batch's statistics): keys are
computed on a batch shuffled across processes (shuffle BN), and on one process both encoders
normalise ``bn_splits`` interleaved sub-batches separately, the key batch shuffled first
(split BN, as in the official CIFAR notebook).

v3 (``mocov3``): queries go through a predictor; each must find its key among the keys of the
whole global batch (gathered without gradient); symmetric loss ``ctr(q1, k2) + ctr(q2, k1)``
with ``ctr = 2T * CE``. For ViTs the patch projection can stay frozen at its random init,
which the paper found to stabilise training.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data.augment import ViewConfig, make_views
from ..losses import gather_no_grad, in_fp32, world
from ..models import is_vit
from ..models.heads import ema_update, mlp
from ..schedules import cosine_to_one
from .base import DataInfo, Method, Picture, denormalize


@dataclass
class Config:
    temperature: float = 0.2       # T; MoCo v2's ablation best (0.07 in v1)
    queue_size: int = 4096         # K negatives (65536 on ImageNet; 4096 in the official CIFAR notebook)
    key_momentum: float = 0.99     # m of the key encoder (0.999 on ImageNet; 0.99 for small data)
    key_momentum_cos: bool = False  # raise m to 1 along a half cosine over training
    symmetric: bool = False        # also ctr(q2, k1), enqueue both keys: better per epoch, twice the compute
    shuffle_bn: bool = True        # shuffle keys across processes (one process: split BN, below)
    bn_splits: int = 4             # one process: sub-batches normalised separately (32 images each at batch 128)
    proj_hidden: int = 512         # projector hidden width
    proj_dim: int = 128            # key / query dimension
    proj_layers: int = 2           # MoCo v2's Linear-ReLU-Linear
    proj_bn: bool = False          # BN in the projector (MoCo v2 has none)
    crop_min: float = 0.2          # random-resized-crop minimum area fraction
    flip_p: float = 0.5
    color_strength: float = 1.0    # s: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s); MoCo v2 uses (0.4, 0.4, 0.4, 0.1), s=0.5;
                                   # 1.0 won on Fashion-MNIST val at 3 min, as for SimCLR (BENCHMARKS.md, tune-moco)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0            # MoCo v2 blurs at 224 px; not at 32 px

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "temperature": "> 0", "queue_size": ">= 1", "key_momentum": "[0, 1]", "bn_splits": ">= 1",
        "proj_hidden": ">= 1", "proj_dim": ">= 1", "proj_layers": ">= 1", "crop_min": "(0, 1]", "flip_p": "[0, 1]",
        "color_strength": ">= 0", "jitter_p": "[0, 1]", "gray_p": "[0, 1]", "blur_p": "[0, 1]",
    }


@dataclass
class ConfigV3:
    temperature: float = 0.2       # T; 0.2 for ViTs (1.0 in the ResNet recipe)
    key_momentum: float = 0.99     # m of the key encoder at the start
    key_momentum_cos: bool = True  # raise m to 1 along a half cosine over training
    proj_hidden: int = 512         # projector and predictor hidden width (4096 on ImageNet)
    proj_dim: int = 128            # output dimension (256 on ImageNet)
    proj_layers: int = 3           # the ViT recipe's 3 layers (2 for ResNets); the last BN has no affine
    pred_last_bn: bool = False     # affine-free BN after the predictor (the ViT recipe; not for ResNets)
    frozen_patch_embed: bool = True  # ViT backbones: keep the patch projection at its random init (no effect on CNNs)
    crop_min: float = 0.2          # random-resized-crop minimum area fraction
    flip_p: float = 0.5
    color_strength: float = 1.0    # s: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s); 1.0 won over 0.5 on Fashion-MNIST val
                                   # at 3 min (BENCHMARKS.md, tune-mocov3)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0            # the paper blurs at 224 px; not at 32 px

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "temperature": "> 0", "key_momentum": "[0, 1]", "proj_hidden": ">= 1", "proj_dim": ">= 1",
        "proj_layers": ">= 1", "crop_min": "(0, 1]", "flip_p": "[0, 1]", "color_strength": ">= 0",
        "jitter_p": "[0, 1]", "gray_p": "[0, 1]", "blur_p": "[0, 1]",
    }


# ----------------------------------------------------------------------------- losses

@in_fp32
def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float):
    """InfoNCE with one positive per query (MoCo v1/v2): CE over logits ``[q.k, q.negatives] / T``, label 0.

    q, k: (n, d) L2-normalised queries and their positive keys; negatives: (K, d) L2-normalised.
    Returns the mean loss and the top-1 accuracy of the positive.
    """
    q, k, negatives = q.float(), k.float(), negatives.float()
    pos = (q * k).sum(dim=1, keepdim=True)                          # (n, 1)
    logits = torch.cat([pos, q @ negatives.T], dim=1) / temperature  # (n, 1 + K)
    labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), (logits.argmax(dim=1) == 0).float().mean()


@in_fp32
def batch_contrast(q: torch.Tensor, keys: torch.Tensor, temperature: float):
    """MoCo v3's ``ctr``: each local query's positive is its own key among the keys of the global batch.

    q: (n, d) local queries; keys: (N, d) keys of every process in rank order (N = n x world).
    Returns ``2T * CE`` (the official scaling) and the top-1 accuracy of the positive.
    """
    rank, _ = world()
    q, keys = F.normalize(q.float(), dim=1), F.normalize(keys.float(), dim=1)
    logits = q @ keys.T / temperature                                          # (n, N)
    labels = torch.arange(len(q), device=q.device) + rank * len(q)
    return F.cross_entropy(logits, labels) * 2 * temperature, (logits.argmax(dim=1) == labels).float().mean()


# ----------------------------------------------------------------------------- queue and batch-norm remedies

class KeyQueue(nn.Module):
    """A FIFO ring buffer of K keys (K, d); the oldest key sits at ``ptr``. Both are buffers, so
    checkpoints keep them. Starts as random unit vectors, as in the official code."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest ``len(keys)`` entries, wrapping around the end (of more than K keys, the last K)."""
        size = len(self.keys)
        keys = keys[-size:]
        idx = (self.ptr + torch.arange(len(keys), device=self.keys.device)) % size
        self.keys[idx] = keys.to(self.keys.dtype)
        self.ptr.copy_((self.ptr + len(keys)) % size)

    def ordered(self) -> torch.Tensor:
        """The keys from oldest to newest (K, d)."""
        return torch.roll(self.keys, -int(self.ptr), dims=0)


def _split_bn_forward(bn: nn.modules.batchnorm._BatchNorm, splits: int, x: torch.Tensor) -> torch.Tensor:
    """``bn`` in train mode with separate statistics for each of ``splits`` interleaved sub-batches
    (rows i, i + splits, ...): (n, c, ...) is seen as (n / splits, splits * c, ...). Running
    statistics become the mean over the sub-batches (the CIFAR notebook's SplitBatchNorm)."""
    n, c = x.shape[:2]
    track = bn.track_running_stats and bn.running_mean is not None
    mean = bn.running_mean.repeat(splits) if track else None
    var = bn.running_var.repeat(splits) if track else None
    weight = bn.weight.repeat(splits) if bn.affine else None
    bias = bn.bias.repeat(splits) if bn.affine else None
    y = F.batch_norm(x.reshape(n // splits, splits * c, *x.shape[2:]), mean, var, weight, bias, True,
                     0.1 if bn.momentum is None else bn.momentum, bn.eps)
    if track:
        with torch.no_grad():
            bn.running_mean.copy_(mean.view(splits, c).mean(0))
            bn.running_var.copy_(var.view(splits, c).mean(0))
            bn.num_batches_tracked += 1
    return y.reshape(x.shape)


@contextlib.contextmanager
def split_batchnorm(module: nn.Module, splits: int):
    """Within this context the batch-norm layers of ``module`` that are in train mode normalise
    ``splits`` interleaved sub-batches separately (the batch must divide by ``splits``)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training] \
        if splits > 1 else []
    for bn in bns:
        bn.forward = partial(_split_bn_forward, bn, splits)
    try:
        yield
    finally:
        for bn in bns:
            del bn.forward


def num_splits(n: int, wanted: int) -> int:
    """The most sub-batches, at most ``wanted``, that divide ``n`` into parts of at least 2."""
    return max([s for s in range(1, wanted + 1) if n % s == 0 and n // s >= 2], default=1)


# ----------------------------------------------------------------------------- methods

class _Momentum(Method):
    """What v2 and v3 share: views, the key encoder (an EMA of backbone + projector), its schedule."""

    train_defaults = dict(optimizer="adamw", lr=8e-3, weight_decay=1e-4, batch_size=128, epochs=5, warmup_epochs=0.5)

    def __init__(self, backbone, cfg, data: DataInfo):
        super().__init__(backbone, cfg, data)
        s = cfg.color_strength
        self.view = ViewConfig(size=data.image_size, scale=(cfg.crop_min, 1.0), flip_p=cfg.flip_p, jitter_p=cfg.jitter_p,
                               brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s,
                               gray_p=cfg.gray_p, blur_p=cfg.blur_p)

    def _query_encoder(self) -> nn.Sequential:
        return nn.Sequential(self.backbone, self.projector)   # a view of the two modules, not registered

    def _make_key_encoder(self) -> None:
        self.key_encoder = copy.deepcopy(self._query_encoder()).requires_grad_(False)

    def momentum(self) -> float:
        """m now: constant, or 1 - (1 - m0)(cos(pi progress) + 1) / 2 with ``key_momentum_cos``."""
        m0 = self.cfg.key_momentum
        if not self.cfg.key_momentum_cos:
            return m0
        return cosine_to_one(self.progress, m0)

    def after_step(self, step: int, total_steps: int) -> None:
        ema_update(self.key_encoder, self._query_encoder(), self.momentum())

    def views(self, images):
        """Two independently augmented, normalised views (B, C, S, S) of a uint8 batch (built as one
        batch of 2B: make_views)."""
        return make_views(images, [self.view, self.view], self.data.mean, self.data.std)

    def pictures(self, batch: dict):
        v1, v2 = self.views(batch["images"][:8])
        return {"views": Picture(denormalize(torch.cat([v1, v2]), self.data), ("view 1", "view 2"))}


class MoCo(_Momentum):
    """MoCo v2: InfoNCE against a queue of keys from past batches, with shuffle / split BN."""

    Config = Config

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        self.projector = mlp(backbone.embed_dim, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers, bn=cfg.proj_bn)
        self._make_key_encoder()
        self.queue = KeyQueue(cfg.queue_size, cfg.proj_dim)
        self._pending: torch.Tensor | None = None   # this step's gathered keys, enqueued in after_step

    def _splits(self, n: int) -> int:
        return num_splits(n, self.cfg.bn_splits) if self.cfg.shuffle_bn and world()[1] == 1 else 1

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised queries (n, d) of the local batch."""
        encoder = self._query_encoder()
        with split_batchnorm(encoder, self._splits(len(x))):
            return F.normalize(encoder(x), dim=1)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys (N, d) of the global batch, rank 0's rows first. With ``shuffle_bn`` the
        key encoder sees a shuffled batch: across processes (a permutation from rank 0, each
        process encodes one slice) or, on one process, in ``bn_splits`` separately normalised parts."""
        rank, size = world()
        enc = self.key_encoder
        if not self.cfg.shuffle_bn:
            return gather_no_grad(F.normalize(enc(x), dim=1))
        everyone = gather_no_grad(x)                                   # (N, C, H, W)
        perm = torch.randperm(len(everyone), device=x.device)
        if size > 1:
            dist.broadcast(perm, src=0)
            n = len(x)
            shuffled = gather_no_grad(enc(everyone[perm[rank * n:(rank + 1) * n]]))
        else:
            with split_batchnorm(enc, self._splits(len(x))):
                shuffled = enc(everyone[perm])
        keys = torch.empty_like(shuffled)
        keys[perm] = shuffled                                          # un-shuffle
        return F.normalize(keys, dim=1)

    def forward(self, batch: dict):
        v1, v2 = self.views(batch["images"])
        rank, _ = world()
        n = len(v1)
        pairs = [(v1, v2), (v2, v1)] if self.cfg.symmetric else [(v1, v2)]
        losses, accs, keys = [], [], []
        for qv, kv in pairs:
            k = self._keys(kv)                                         # (N, d)
            loss, acc = info_nce(self._queries(qv), k[rank * n:(rank + 1) * n], self.queue.keys, self.cfg.temperature)
            losses.append(loss)
            accs.append(acc)
            keys.append(k)
        self._pending = torch.cat(keys)
        return sum(losses) / len(losses), {"pos_acc": (sum(accs) / len(accs)).detach()}

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        if self._pending is not None:
            self.queue.push(self._pending)
            self._pending = None


class MoCoV3(_Momentum):
    """MoCo v3: a predictor on the query branch, in-batch negatives from every process, no queue."""

    Config = ConfigV3
    compile_pays = ("conv",)   # compile=auto: measured on a CPU in fp32 (BENCHMARKS.md, compile-auto)

    def __init__(self, backbone, cfg: ConfigV3, data: DataInfo):
        super().__init__(backbone, cfg, data)
        d = backbone.embed_dim
        self.projector = mlp(d, cfg.proj_hidden, cfg.proj_dim, layers=cfg.proj_layers, last_bn=True)
        self.predictor = mlp(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim, layers=2, last_bn=cfg.pred_last_bn)
        if cfg.frozen_patch_embed and is_vit(backbone):
            backbone.vit.patch_embed.requires_grad_(False)
        self._make_key_encoder()

    def forward(self, batch: dict):
        v1, v2 = self.views(batch["images"])
        q1, q2 = (self.predictor(self.projector(self.backbone(v))) for v in (v1, v2))
        with torch.no_grad():
            k1, k2 = (gather_no_grad(self.key_encoder(v)) for v in (v1, v2))   # (N, d) each
        loss1, acc1 = batch_contrast(q1, k2, self.cfg.temperature)
        loss2, acc2 = batch_contrast(q2, k1, self.cfg.temperature)
        return loss1 + loss2, {"pos_acc": ((acc1 + acc2) / 2).detach()}
