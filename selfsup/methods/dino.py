"""DINO: self-distillation with no labels, a student matching an EMA teacher across crops.

Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021. https://arxiv.org/abs/2104.14294

Multi-crop views (2 global crops at the image size, optional smaller local crops); the student
(backbone -> DINO head: MLP, L2-normalised bottleneck, weight-normalised prototypes) sees every
crop, the teacher (an EMA of the student, no gradient) only the global ones. Loss: cross-entropy
between the teacher's centred, sharpened softmax and the student's softmax, over all pairs of
different views. The centre is an EMA of the teacher's batch mean, averaged over processes.

Departures from the paper, for small images and short runs: every schedule reads the fraction
of training done (``progress``) instead of epochs; smaller head (512 hidden, 128 bottleneck,
K = 2048 prototypes instead of 2048/256/65536); teacher momentum 0.99 -> 1 (0.996 at batch
1024); no local crops by default, global crop scale (0.2, 1) (the paper's 0.14 without
multi-crop at 224 px); no blur at small sizes. BatchNorm in the head MLP (lightly's CIFAR
recipe; the paper has none): at initialisation a small backbone maps all images to nearly the
same point, the centre removes that point and the teacher is left uniform; without head BN a
resnet18_quarter collapsed to ln K within 60 steps on Fashion-MNIST and shapes.

The last layer is frozen by zeroing its gradient (a hook on its parameters: the engine steps the
optimiser right after backward). AdamW then leaves it unchanged up to weight decay of v, which
a weight-normalised layer with g fixed ignores; the paper sets the gradient to None instead.
Evaluation and export take the teacher's backbone with a ViT, as the paper does, and the student's with a
conv backbone, which scored higher at a few CPU-minutes (``eval_backbone``; ``DINO.family_defaults``).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..data.augment import ViewConfig, make_views
from ..distributed import all_reduce_mean
from ..errors import SelfSupError
from ..losses import world
from ..models import is_vit
from ..models.attention import attention_pictures, cls_attention
from ..models.heads import ema_update
from ..schedules import cosine_to_one
from .base import DataInfo, Method, Picture, denormalize


@dataclass
class Config:
    out_dim: int = 2048                 # K prototypes (65536 on ImageNet; 2048-4096 at small scale: lightly, solo-learn;
                                        # 64 for a small ViT whose attention should find objects: BENCHMARKS.md)
    hidden_dim: int = 512               # head MLP width (2048 in the paper)
    bottleneck_dim: int = 128           # L2-normalised bottleneck before the prototypes (256 in the paper)
    head_layers: int = 3                # Linear layers before the bottleneck output, GELU between
    head_bn: bool = True                # BatchNorm in the head MLP (paper: off; without it a ResNet collapsed here, see docstring)
    norm_last_layer: bool = True        # keep the prototypes' weight-norm gain g fixed at 1
    freeze_last_layer: float = 0.0      # fraction of training with the prototypes frozen (paper: 1 of 100-800 epochs)
    student_temp: float = 0.1           # tau_s
    teacher_temp: float = 0.04          # tau_t after the warm-up (paper 0.04; 0.07 with a warm-up; above ~0.06 collapses)
    warmup_teacher_temp: float = 0.04   # tau_t at the start, linear to teacher_temp
    teacher_temp_warmup: float = 0.0    # fraction of training of the tau_t warm-up (paper 30 of 300 epochs)
    teacher_momentum: float = 0.99      # teacher EMA momentum at the start, cosine to 1 (paper 0.996 at batch 1024)
    center_momentum: float = 0.9        # m in c <- m c + (1 - m) mean(teacher outputs)
    n_global: int = 2                   # global crops at the image size; the teacher sees only these
    n_local: int = 0                    # local crops (paper 8-10; small images learn without, notes 11.1)
    global_crop_min: float = 0.0        # global crop area fraction minimum; 0: 0.4 with local crops, 0.2 without
    local_crop_min: float = 0.05        # local crops take area (local_crop_min, global minimum)
    local_size: int = 0                 # local crop side; 0: half the image, rounded to a multiple of 4 (ViT patch)
    flip_p: float = 0.5
    jitter_p: float = 0.8               # ColorJitter with this probability (BYOL / DINO)
    color_strength: float = 0.5         # s: ColorJitter(0.8s, 0.8s, 0.4s, 0.2s); 0.5 is the paper's (0.4, 0.4, 0.2, 0.1)
    gray_p: float = 0.2
    blur_p: float = 0.0                 # the paper blurs (1.0 / 0.1 / 0.5); off at small sizes (notes 11.2)
    solarize_p: float = 0.2             # on the second global crop only
    collapse_tol: float = 0.05          # warn once when KL < tol ln K and the teacher entropy is within tol ln K of ln K or 0
    collapse_after: float = 0.1         # ... from this fraction of training on
    eval_backbone: str = "teacher"      # saved for evaluation/export: "teacher" (the paper) | "student"

    ranges = {   # each setting's valid values, checked before any work (selfsup.config.check_ranges)
        "out_dim": ">= 1", "hidden_dim": ">= 1", "bottleneck_dim": ">= 1", "head_layers": ">= 1",
        "freeze_last_layer": "[0, 1]", "student_temp": "> 0", "teacher_temp": "> 0", "warmup_teacher_temp": "> 0",
        "teacher_temp_warmup": "[0, 1]", "teacher_momentum": "[0, 1]", "center_momentum": "[0, 1)",
        "n_global": ">= 1", "n_local": ">= 0", "global_crop_min": "[0, 1]", "local_crop_min": "(0, 1]",
        "local_size": ">= 0", "flip_p": "[0, 1]", "jitter_p": "[0, 1]", "color_strength": ">= 0", "gray_p": "[0, 1]",
        "blur_p": "[0, 1]", "solarize_p": "[0, 1]", "collapse_tol": ">= 0", "collapse_after": "[0, 1]",
        "eval_backbone": ("teacher", "student"),
    }


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised Linear(bottleneck, out_dim, no bias).

    (B, in_dim) -> (B, out_dim) logits. With ``norm_last_layer`` the weight-norm gain g is fixed
    at 1, so each logit is a cosine between the bottleneck and a prototype."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128,
                 layers: int = 3, bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        mods, dim = [], in_dim
        for _ in range(layers - 1):
            mods += [nn.Linear(dim, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if bn else []) + [nn.GELU()]
            dim = hidden_dim
        self.mlp = nn.Sequential(*mods, nn.Linear(dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0      # (out_dim, 1)
        g.data.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's cross-entropy over pairs of different views.

    student: one (n, K) logit tensor per view, global views first; teacher: (n, K) raw logits per
    global view; center: (1, K). Teacher targets softmax((t - c) / teacher_temp) (no gradient),
    student log_softmax(s / student_temp); H(P_t, P_s) averaged over the batch and over the
    pairs (teacher view i, student view v != i). Returns (loss, mean entropy of the teacher targets).
    """
    log_p = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    q = [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher]
    total, pairs = 0.0, 0
    for i, qi in enumerate(q):
        for v, lp in enumerate(log_p):
            if v == i:
                continue
            total = total + torch.sum(-qi * lp, dim=-1).mean()
            pairs += 1
    entropy = torch.stack([torch.sum(-qi * torch.log(qi.clamp_min(1e-30)), dim=-1).mean() for qi in q]).mean()
    return total / pairs, entropy


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> None:
    """c <- momentum * c + (1 - momentum) * mean of ``teacher`` (n, K) over the global batch, in place.

    The per-process means are averaged over processes (equal per-process batches, as the
    engine gives), so every process holds the same centre."""
    batch_center = all_reduce_mean(teacher.float().mean(0, keepdim=True))
    center.mul_(momentum).add_(batch_center, alpha=1 - momentum)


def teacher_momentum(m0: float, progress: float) -> float:
    """Cosine from ``m0`` at the start to 1 at the end of training."""
    return cosine_to_one(progress, m0)


class DINO(Method):
    Config = Config
    compile_pays = ("conv",)   # compile=auto: measured on a CPU in fp32 (BENCHMARKS.md, compile-auto)
    # For the conv backbones, lr 4e-3 and the student saved for evaluation: chosen on validation at the cpu
    # budget (BENCHMARKS.md, tune-dino-fashion-mnist: lr 1e-3 to 8e-3, teacher or student); at a few
    # epochs the EMA teacher, its momentum rising to 1, lags the student. The ViTs keep lr 1e-3 and the
    # teacher, the recipe their attention figures were chosen and measured with.
    train_defaults = dict(optimizer="adamw", lr=4e-3, weight_decay=0.04, batch_size=128, epochs=10,
                          warmup_epochs=1.0, grad_clip=3.0)
    family_defaults = {"conv": dict(eval_backbone="student"), "vit": dict(lr=1e-3)}

    def __init__(self, backbone, cfg: Config, data: DataInfo):
        super().__init__(backbone, cfg, data)
        _check(cfg)
        self.head = DINOHead(backbone.embed_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.head_layers,
                             cfg.head_bn, cfg.norm_last_layer)
        # the teacher: a copy taking no gradient, moved only by after_step (outside any DDP wrapper)
        self.teacher_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        if cfg.freeze_last_layer > 0:
            for p in self.head.last_layer.parameters():
                if p.requires_grad:
                    p.register_hook(self._freeze_hook)
        self._warned = False

        size = data.image_size
        gmin = cfg.global_crop_min or (0.4 if cfg.n_local else 0.2)
        c = cfg.color_strength
        common = dict(flip_p=cfg.flip_p, jitter_p=cfg.jitter_p, brightness=0.8 * c, contrast=0.8 * c, saturation=0.4 * c,
                      hue=0.2 * c, gray_p=cfg.gray_p, blur_p=cfg.blur_p)
        g1 = ViewConfig(size=size, scale=(gmin, 1.0), **common)
        g2 = ViewConfig(size=size, scale=(gmin, 1.0), solarize_p=cfg.solarize_p, **common)
        local = ViewConfig(size=cfg.local_size or max(4, 4 * round(size / 8)), scale=(cfg.local_crop_min, gmin),
                           **common)
        self.recipes = ([g1, g2] * cfg.n_global)[:cfg.n_global] + [local] * cfg.n_local

    # ---------------------------------------------------------------- schedules (read self.progress)
    def teacher_temp(self) -> float:
        c = self.cfg
        if c.teacher_temp_warmup <= 0 or self.progress >= c.teacher_temp_warmup:
            return c.teacher_temp
        return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * self.progress / c.teacher_temp_warmup

    def _freeze_hook(self, grad: torch.Tensor):
        return torch.zeros_like(grad) if self.progress < self.cfg.freeze_last_layer else None

    # ---------------------------------------------------------------- the step
    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``n_global`` global crops (B, C, S, S), then ``n_local`` local crops (B, C, s, s), normalised."""
        return make_views(images, self.recipes, self.data.mean, self.data.std)

    def student(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student logits per crop; crops of one size go through the backbone together."""
        g = self.cfg.n_global
        out = []
        for group in (crops[:g], crops[g:]):
            if group:
                out += self.head(self.backbone(torch.cat(group))).chunk(len(group))
        return out

    def forward(self, batch: dict):
        crops = self.views(batch["images"])
        g = self.cfg.n_global
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(torch.cat(crops[:g])))   # (g n, K), global crops only
        student = self.student(crops)
        loss, entropy = dino_loss(student, list(teacher.chunk(g)), self.center, self.cfg.student_temp,
                                  self.teacher_temp())
        if self.training:
            update_center(self.center, teacher, self.cfg.center_momentum)   # after the loss, as the paper
            self._check_collapse(entropy.detach(), (loss - entropy).detach())
        # mean cross-entropy = mean teacher entropy + mean KL(teacher || student) over the pairs
        return loss, {"teacher_entropy": entropy.detach(), "kl": (loss - entropy).detach(),
                      "teacher_temp": self.teacher_temp()}

    def after_step(self, step: int, total_steps: int) -> None:
        m = teacher_momentum(self.cfg.teacher_momentum, self.progress)
        ema_update(self.teacher_backbone, self.backbone, m)
        ema_update(self.teacher_head, self.head, m)

    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone if self.cfg.eval_backbone == "teacher" else self.backbone

    @classmethod
    def export_prefix(cls, method_cfg: dict) -> str:
        return "teacher_backbone." if method_cfg.get("eval_backbone", "teacher") == "teacher" else "backbone."

    def _check_collapse(self, entropy: torch.Tensor, kl: torch.Tensor) -> None:
        """Warn once per run on either collapse of the paper (sec. 5.3): the student matches the
        teacher (KL near 0) and the teacher is uniform (entropy ln K, loss ln K) or one-hot (entropy
        and loss near 0). The loss alone misleads: entropy + KL can sum to about ln K while neither
        is at an extreme (seen on Fashion-MNIST early in training)."""
        if self._warned or self.progress < self.cfg.collapse_after or world()[0] != 0:
            return
        h, kl, ln_k = float(entropy), float(kl), math.log(self.cfg.out_dim)
        tol = self.cfg.collapse_tol * ln_k
        if kl >= tol:
            return
        if h > ln_k - tol:
            why = f"uniform (loss at ln K = {ln_k:.3f}); try head_bn, a lower teacher_temp, a smaller out_dim"
        elif h < tol:
            why = "one prototype wins (loss near 0); check the centring"
        else:
            return
        self._warned = True
        warnings.warn(f"DINO may have collapsed: teacher entropy {h:.3f}, KL {kl:.3f}: {why}", RuntimeWarning, stacklevel=2)

    # ---------------------------------------------------------------- pictures
    def attention(self, images: torch.Tensor) -> torch.Tensor:
        """CLS attention maps of the exported ViT backbone (the teacher by default), (B, heads, H/p, W/p), for uint8 ``images``."""
        from ..data.augment import normalize, to_float
        return cls_attention(self.export_backbone(), normalize(to_float(images), self.data.mean, self.data.std))

    def pictures(self, batch: dict):
        images = batch["images"][:8]
        crops = self.views(images)
        size = crops[0].shape[-1]
        crops = [c if c.shape[-1] == size else F.interpolate(c, size=size, mode="nearest") for c in crops]
        g = self.cfg.n_global
        names = [f"global crop {i + 1}" for i in range(g)] + [f"local crop {i + 1} (upscaled)" for i in range(len(crops) - g)]
        pics = {"views": Picture(denormalize(torch.cat(crops), self.data), tuple(names))}
        if is_vit(self.export_backbone()):
            att = attention_pictures(self.export_backbone(), images, self.data.mean, self.data.std)
            heads = len(att) // len(images) - 2
            pics["attention"] = Picture(att, ("image", *(f"attention, head {h + 1}" for h in range(heads)),
                                              "image x mean attention"))
        return pics


def _check(cfg: Config) -> None:
    # single settings are checked against Config.ranges before any work; here what involves two
    checks = [("n_local", cfg.n_global + cfg.n_local >= 2, "at least 1 with one global crop (the loss needs two views)")]
    gmin = cfg.global_crop_min or (0.4 if cfg.n_local else 0.2)
    if cfg.n_local:
        checks.append(("local_crop_min", cfg.local_crop_min < gmin, f"below the global crops' minimum {gmin}"))
    for name, ok, want in checks:
        if not ok:
            raise SelfSupError(f"--set {name}={getattr(cfg, name)}: must be {want}")
