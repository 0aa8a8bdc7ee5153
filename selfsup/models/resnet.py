"""ResNets for small images, assembled from torchvision's residual blocks.

The stem is a 3x3 stride-1 convolution with no max-pool (SimCLR App. B.9, the MoCo CIFAR
recipe), so a 28 or 32 px image keeps its resolution into the first stage. ``width`` scales
every stage: 64 is the standard ResNet-18, 16 a quarter-width ResNet-18 that trains on a CPU.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class ResNet(nn.Module):
    """ResNet backbone; ``forward_features`` gives the last feature map (B, D, H/8, W/8),
    ``forward`` the global-average-pooled embedding (B, D) with D = ``embed_dim``."""

    def __init__(self, layers=(2, 2, 2, 2), width: int = 64, in_chans: int = 3, block: str = "basic",
                 zero_init_residual: bool = False):
        super().__init__()
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages, inplanes = [], width
        for i, n_blocks in enumerate(layers):
            planes, stride = width * 2 ** i, 1 if i == 0 else 2
            blocks = []
            for j in range(n_blocks):
                down = None
                if j == 0 and (stride != 1 or inplanes != planes * block_cls.expansion):
                    down = nn.Sequential(nn.Conv2d(inplanes, planes * block_cls.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(planes * block_cls.expansion))
                blocks.append(block_cls(inplanes, planes, stride if j == 0 else 1, down))
                inplanes = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.embed_dim = inplanes
        self.num_stages = len(stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
                elif isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        """Feature map after ``stage`` (1-based; default the last): (B, C_stage, H_s, W_s)."""
        x = self.stem(x)
        for i, s in enumerate(self.stages, start=1):
            x = s(x)
            if stage is not None and i == stage:
                break
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after every stage, in one pass."""
        x, out = self.stem(x), []
        for s in self.stages:
            x = s(x)
            out.append(x)
        return out

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))
