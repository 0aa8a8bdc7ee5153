"""Compute budgets, defined once: what ``selfsup bench`` and the benchmark scripts give each method.

Methods are compared at equal wall-clock time on the same machine, not equal epochs (rotation
sees 4 views per image, jigsaw 9 tiles, DINO many crops); images/s counts source images.
``cpu`` is sized so one seed of the whole bench (every method on Fashion-MNIST and ``shapes``,
with its evaluations) fits in about 90 minutes on two cores.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import SelfSupError


@dataclass(frozen=True)
class Budget:
    name: str
    backbone: str          # convolutional backbone
    vit: str               # transformer backbone (MAE, DINO attention maps)
    minutes: float         # wall-clock training time per method, dataset and seed
    max_epochs: int        # a cap that a wall-clock run never reaches on its machine (smoke: the real limit)
    ft_minutes: float = 0.0          # wall-clock minutes per fine-tuning run (0: ft_epochs instead)
    ft_epochs: float = 1.0
    ft_lrs: tuple = (1e-3, 3e-3)     # fine-tuning learning rates, chosen on a held-out sixth of the labels


BUDGETS = {
    # smoke: does every method run end to end; tiny data finishes by epochs, not by the clock
    "smoke": Budget("smoke", "resnet18_quarter", "vit_micro", minutes=0.2, max_epochs=2, ft_epochs=1, ft_lrs=(1e-3,)),
    # cpu: Fashion-MNIST, every method + baselines, one seed in about 90 minutes on two cores:
    # ~27 min pretraining, ~11 min probes, ~45 min fine-tuning (10 arms x 3 fractions x 3 runs x 0.5 min)
    "cpu": Budget("cpu", "resnet18_quarter", "vit_micro", minutes=3.0, max_epochs=1000, ft_minutes=0.5),
    "gpu": Budget("gpu", "resnet18", "vit_tiny", minutes=20.0, max_epochs=1000, ft_minutes=3.0),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise SelfSupError(f"--budget {name}: unknown budget (known: {', '.join(BUDGETS)})")
    return BUDGETS[name]
