"""Compute budgets, defined once: what ``selfsup bench`` and the benchmark scripts give each method.

Methods are compared at equal wall-clock time on the same machine, not equal epochs (rotation
sees 4 views per image, jigsaw 9 tiles, DINO many crops); images/s counts source images.
``cpu`` is sized so one seed of the whole bench (every method on Fashion-MNIST with its
evaluations) fits in 150 minutes on two cores. Fine-tuning runs have a step budget, so that the
warm-up and the decay follow each run's own length and a slower machine trains as long.
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
    ft_minutes: float = 0.0          # wall-clock minutes per fine-tuning run (0: a step budget instead)
    ft_epochs: float = 10.0          # step budget per fine-tuning run: this many epochs over the labelled images,
    ft_min_steps: int = 1000         # but at least this many optimiser steps (small label fractions)
    ft_lrs: tuple = (3e-4, 1e-3, 3e-3, 1e-2)   # fine-tuning learning rates, chosen on a held-out sixth of the labels
    ft_search_share: float = 1.0     # ... each candidate training this share of the run's steps (eval finetune --search-share)
    ft_full: int = -1                # self-supervised methods fine-tuned on 100% of the labels: the best N by
                                     # linear probe (-1: all), and supervised on their backbones and the budget's
    subsample: int = 0               # train on a stratified subset of this many images (0: all), for a quick look
    test_subsample: int = 0          # ... and score on this many test images (0: all)


BUDGETS = {
    # smoke: does every method run end to end, on any dataset, within 5 minutes: a 2,000-image subset
    # (500 test images), 3 seconds of pretraining, 20-step fine-tuning with one learning rate
    "smoke": Budget("smoke", "resnet18_quarter", "vit_micro", minutes=0.05, max_epochs=2, ft_epochs=1, ft_min_steps=20,
                    ft_lrs=(1e-3,), subsample=2000, test_subsample=500),
    # cpu: Fashion-MNIST, every method + baselines, one seed within 150 minutes on two cores. Fine-tuning is the
    # bulk of it (a ViT step costs about 3.5 conv steps): 5 epochs (at least 300 steps), each learning-rate
    # candidate a quarter of that, 100% of the labels for the best method and supervised only. The converged
    # protocol (10 epochs, at least 1,000 steps, every arm at 100%) is benchmarks/label_efficiency.py.
    "cpu": Budget("cpu", "resnet18_quarter", "vit_micro", minutes=3.0, max_epochs=1000, ft_epochs=5, ft_min_steps=300,
                  ft_search_share=0.25, ft_full=1),
    "gpu": Budget("gpu", "resnet18", "vit_tiny", minutes=20.0, max_epochs=1000, ft_epochs=30, ft_min_steps=2000),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise SelfSupError(f"--budget {name}: unknown budget (known: {', '.join(BUDGETS)})")
    return BUDGETS[name]
