"""Parameter groups for an optimiser: weight decay on weights only, and an optional per-parameter
learning-rate scale. Here, below the engine, so a method can shape its own groups (fine-tuning's
layer-wise decay) without importing the engine."""
from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, scale_of=None) -> list[dict]:
    """Weights with decay; biases, norm weights and other 1-D parameters without. With
    ``scale_of(name) -> float`` each group also carries an ``lr_scale`` (the engine multiplies the
    scheduled rate by it): one pair of groups per distinct scale."""
    groups: dict[tuple, dict] = {}

    def group(scale: float, no_decay: bool) -> dict:
        key = (scale, no_decay)
        if key not in groups:
            groups[key] = dict(params=[], weight_decay=0.0 if no_decay else weight_decay, lr_scale=scale)
            if no_decay:
                groups[key]["lars_exclude"] = True
        return groups[key]

    if scale_of is None:   # always the same two groups, decay first
        group(1.0, False), group(1.0, True)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        group(1.0 if scale_of is None else float(scale_of(name)), no_decay)["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], k[1]))]
