"""Losses shared by several methods, and the gather that keeps gradients across processes."""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F


def in_fp32(fn):
    """Run a loss in float32 whatever autocast is on (bf16 on the CPU with cpu_bf16, on CUDA with
    amp): a cosine similarity near 1 has a bf16 step of 0.004, which T = 0.1 makes 0.04 of a logit,
    and the matmul's sums round too. Half-precision tensor arguments are cast to float32 (float64
    stays); the backbone and heads before the loss keep running in bf16."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        up = lambda a: a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16) else a  # noqa: E731
        with torch.autocast(device, enabled=False):
            return fn(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
    return wrapper


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's slice.

    ``torch.distributed.all_gather`` has no backward, so negatives from other processes would
    give no gradient to their owner (lightly#1528). The backward is an all-reduce (SUM) of the
    gathered gradients followed by taking the local slice: with DDP's gradient averaging this
    gives exactly the gradient of the single-process loss on the global batch (tested).
    """

    @staticmethod
    def forward(ctx, x):
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rank, size = dist.get_rank(), dist.get_world_size()
        n = grad.shape[0] // size
        return grad[rank * n:(rank + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, ...) from every process along dim 0, keeping gradients; identity on one process."""
    _, size = world()
    return x if size == 1 else _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process without gradient (keys, labels)."""
    _, size = world()
    if size == 1:
        return x
    out = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@in_fp32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (SimCLR) over two views, with negatives from every process.

    z1, z2: (n, d) projections of the two views of the same n local images.
    Each of the 2n local anchors is scored against all 2N global embeddings but itself
    (N = n x world size); its positive is the other view of the same image. Returns the mean
    over local anchors (the official TF code sums the two directions, i.e. twice this) and
    the top-1 accuracy of finding the positive.
    """
    rank, _ = world()
    n = z1.shape[0]
    local = F.normalize(torch.cat([z1, z2]), dim=1)                        # (2n, d)
    g1, g2 = gather_with_grad(local[:n]), gather_with_grad(local[n:])        # (N, d) each
    everyone = torch.cat([g1, g2])                                            # (2N, d)
    big_n = g1.shape[0]
    logits = local @ everyone.T / temperature                                 # (2n, 2N)
    own = torch.arange(n, device=z1.device) + rank * n                        # global index of local images
    self_cols = torch.cat([own, own + big_n])
    pos_cols = torch.cat([own + big_n, own])
    logits[torch.arange(2 * n, device=z1.device), self_cols] = float("-inf")  # drop the self-similarity
    loss = F.cross_entropy(logits, pos_cols)
    acc = (logits.argmax(dim=1) == pos_cols).float().mean()
    return loss, acc
