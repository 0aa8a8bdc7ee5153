"""The per-image pipeline that lightly and solo-learn use, built from a selfsup ``ViewConfig``: the
baseline of augment_speed.py and step_speed.py. Each image goes through torchvision ``transforms.v2``
one at a time (in DataLoader workers); selfsup builds the same views as whole-batch tensor ops."""
from __future__ import annotations

import torch
import torchvision.transforms.v2 as T


def tv_transform(cfg, mean, std):
    """torchvision v2's per-image version of one ``ViewConfig``: RandomResizedCrop, flip,
    RandomApply(ColorJitter), RandomGrayscale, blur, solarize (each where the recipe has it),
    ToDtype, Normalize."""
    ops = [T.RandomResizedCrop(cfg.size, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
           T.RandomHorizontalFlip(cfg.flip_p)]
    if cfg.jitter_p > 0:
        ops.append(T.RandomApply([T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p))
    if cfg.gray_p > 0:
        ops.append(T.RandomGrayscale(cfg.gray_p))
    if cfg.blur_p > 0:
        k = cfg.blur_kernel or max(3, int(0.1 * cfg.size) | 1)
        ops.append(T.RandomApply([T.GaussianBlur(k, cfg.blur_sigma)], p=cfg.blur_p))
    if cfg.solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=cfg.solarize_p))
    return T.Compose(ops + [T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


class PerImageViews(torch.utils.data.Dataset):
    """A uint8 tensor dataset giving, for image i, one view per transform (a tuple)."""

    def __init__(self, images: torch.Tensor, transforms):
        self.images, self.transforms = images, list(transforms)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i]
        return tuple(t(img) for t in self.transforms)
