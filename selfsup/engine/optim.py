"""Optimisers: AdamW, SGD and LARS, with no weight decay on biases and normalisation weights."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import SelfSupError
from ..models.params import param_groups

__all__ = ["LARS", "param_groups", "build_optimizer", "fused_adamw"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017), as used by SimCLR/BYOL.

    Parameter groups with ``lars_exclude=True`` (biases, norms) get plain SGD with momentum.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    trust = torch.where((p_norm > 0) & (d_norm > 0), group["eta"] * p_norm / d_norm, torch.ones_like(p_norm))
                    d = d.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])


def fused_adamw() -> bool:
    """Whether torch has AdamW's fused kernel for CPU tensors as well as CUDA ones (torch 2.4+).
    It does the same update as the per-parameter loop (within 5e-7 after 23 steps of MAE) in one
    kernel per step: 2.1-2.6x faster optimiser steps on the 2-core CPU (BENCHMARKS.md, vit-bf16)."""
    return torch.__version__ >= (2, 4)        # torch.torch_version.TorchVersion compares as a version


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9,
                    beta2: float = 0.999):
    custom = getattr(model, "optimizer_groups", None)
    groups = (custom(weight_decay) if callable(custom) else None) or param_groups(model, weight_decay)
    if name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2), fused=fused_adamw() or None)
    if name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    raise SelfSupError(f"--set optimizer={name}: unknown optimizer (known: adamw, sgd, lars)")
