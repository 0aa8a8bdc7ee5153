"""The one device picker every command uses: ``auto`` takes this process's GPU when CUDA is there
and the CPU otherwise; an explicit ``cuda`` (or ``cuda:N``) without CUDA is an error, never a
silent fall-back."""
from __future__ import annotations

import torch

from ..distributed import local_rank
from ..errors import SelfSupError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SelfSupError(f"--device {name}: CUDA is not available on this machine")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank()}")
    return torch.device(name)
