"""What every method shares: the data facts it is built for, and the contract with the engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class DataInfo:
    """The facts about the training data a method needs to build itself."""

    channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    num_classes: int = 0


class Method(nn.Module):
    """Base of every method. Subclasses set ``Config`` (a dataclass of their own settings),
    ``train_defaults`` (small-image defaults of the training config: lr, batch size, ...) and
    implement ``forward(batch) -> (loss, logs)`` where ``batch["images"]`` is uint8 (B, C, H, W).

    ``after_step(step, total_steps)`` runs after each optimiser step (EMA teachers, queues).
    ``backbone`` is what evaluation and export take.
    """

    Config: ClassVar[type]
    uses_labels: ClassVar[bool] = False
    primary_eval: ClassVar[str] = "knn"
    train_defaults: ClassVar[dict] = {}

    def __init__(self, backbone: nn.Module, cfg, data: DataInfo):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.data = data

    def after_step(self, step: int, total_steps: int) -> None:
        pass

    def pictures(self, batch: dict) -> dict[str, torch.Tensor]:
        """Images (N, C, H, W) in [0, 1] that show what the method does, by name; none by default."""
        return {}


def denormalize(x: torch.Tensor, data: DataInfo) -> torch.Tensor:
    """Undo the input normalisation of a view, for pictures: (B, C, H, W) in [0, 1]."""
    mean = torch.tensor(data.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)
