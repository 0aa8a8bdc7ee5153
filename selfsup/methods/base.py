"""What every method shares: the data facts it is built for, and the contract with the engine."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..config import check_ranges
from ..data.core import DataInfo
from ..runs.pictures import Picture

__all__ = ["DataInfo", "Method", "Picture", "denormalize"]


class Method(nn.Module):
    """Base of every method. Subclasses set ``Config`` (a dataclass of their own settings),
    ``train_defaults`` (small-image defaults of the training config: lr, batch size, ...) and
    implement ``forward(batch) -> (loss, logs)`` where ``batch["images"]`` is uint8 (B, C, H, W).

    ``after_step(step, total_steps)`` runs after each optimiser step (EMA teachers, queues).
    ``progress`` is the fraction of training done, in [0, 1], set by the engine before each step:
    by steps, or by wall-clock under ``--time-limit`` (where ``total_steps`` is only a cap), so
    schedules (EMA momentum towards 1, temperature warm-up, a frozen last layer) should read it.
    ``uses_captions`` methods get ``batch["captions"]`` (a list of strings) and, once before a new
    run, ``prepare_text(captions)`` with every training caption (CLIP's tokenizer).
    ``prepare(images)`` runs once before the first step of a new run (not on resume: what it
    computes belongs in buffers, which the checkpoint keeps) with a seeded sample of the
    training images, uint8 (N, C, H, W), for statistics of the data (colorization's bin prior).
    ``export_backbone()`` is what evaluation and export take (``backbone`` unless a method says
    otherwise, e.g. DINO's EMA teacher). ``input_space`` says what the backbone
    sees: "rgb" (the images' own channels, normalised) or "lab_l" (the Lab lightness of RGB
    images, one channel: ``selfsup.data.color.lightness_input``); evaluation feeds the same.
    ``pictures(batch)`` returns, by name, a ``Picture(images, rows)``: images (R * n, C, H, W)
    in [0, 1] as R rows of n, and one label per row saying what it shows ("grey input",
    "prediction", "original"); the app writes each as RUN/pictures/NAME.png, tiles upscaled to
    at least 96 px, labels in a left margin (``selfsup.runs.pictures``). A plain tensor is still
    accepted (rows of 8, unlabelled).

    Optional hooks, declared here so that callers never probe with ``hasattr``: ``view`` (the
    method's one augmentation recipe, a ViewConfig, or None), ``views(images)`` (its augmented
    views of uint8 images, or None when it has no multi-view recipe), ``embed_texts(captions)``
    (the text tower of a ``uses_captions`` method) and ``pretrained_from(cfg)`` (a run folder
    whose backbone the method starts from; the app loads it and passes it in as ``pretrained``).
    """

    Config: ClassVar[type]
    uses_labels: ClassVar[bool] = False
    uses_captions: ClassVar[bool] = False
    train_defaults: ClassVar[dict] = {}
    # defaults that differ by the backbone's family ("conv" | "vit", models.family): training or method
    # settings, over train_defaults and Config's defaults, under the user's settings
    family_defaults: ClassVar[dict] = {}
    input_space: ClassVar[str] = "rgb"
    # backbone families ("conv" | "vit") for which compile=auto may compile this method on a CPU in
    # fp32: only where an end-to-end A/B showed it pays (BENCHMARKS.md, compile-auto); elsewhere eager
    compile_pays: ClassVar[tuple[str, ...]] = ()
    prepare_samples: ClassVar[int] = 0   # how many training images ``prepare`` wants (0: it is not called)
    progress: float = 0.0
    view = None   # ViewConfig | None: the one augmentation recipe, where the method has one

    def __init__(self, backbone: nn.Module, cfg, data: DataInfo):
        super().__init__()
        check_ranges(cfg)   # each setting in its declared range (also when built without resolve_config)
        self.backbone = backbone
        self.cfg = cfg
        self.data = data

    def after_step(self, step: int, total_steps: int) -> None:
        pass

    def prepare(self, images: torch.Tensor) -> None:
        pass

    def run_files(self) -> dict[str, str]:
        """Extra text files for the run folder at the end of training, by name (CLIP's tokenizer)."""
        return {}

    def export_backbone(self) -> nn.Module:
        """The backbone saved for evaluation and export at the end of training."""
        return self.backbone

    def optimizer_groups(self, weight_decay: float) -> list[dict] | None:
        """Parameter groups for the optimiser (each may carry an ``lr_scale``); None: the default
        two groups, with and without weight decay."""
        return None

    @classmethod
    def export_prefix(cls, method_cfg: dict) -> str:
        """Where ``export_backbone()`` sits in the method's state dict (recorded in each checkpoint,
        so an interrupted run's backbone loads without the method)."""
        return "backbone."

    @classmethod
    def pretrained_from(cls, cfg) -> str:
        """A run folder (or backbone file) whose backbone this method starts from; "" for none."""
        return ""

    def views(self, images: torch.Tensor) -> list[torch.Tensor] | None:
        """The method's augmented views of uint8 ``images`` (B, C, H, W), each normalised; None
        when it has no multi-view recipe (then ``view``, if any, is its recipe)."""
        return None

    def embed_texts(self, captions: list[str], batch_size: int = 512) -> torch.Tensor:
        """Normalised text embeddings (N, d) of ``captions``: only methods that ``uses_captions``."""
        raise NotImplementedError(f"{type(self).__name__} has no text tower")

    def pictures(self, batch: dict) -> dict[str, Picture]:
        """Labelled rows of images in [0, 1] that show what the method does, by name; none by default."""
        return {}


def denormalize(x: torch.Tensor, data: DataInfo) -> torch.Tensor:
    """Undo the input normalisation of a view, for pictures: (B, C, H, W) in [0, 1]."""
    mean = torch.tensor(data.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)
