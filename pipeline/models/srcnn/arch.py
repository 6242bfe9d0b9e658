"""SRCNN (Dong et al., "Learning a Deep Convolutional Network for Image
Super-Resolution", ECCV 2014), the 9-5-5 network with 64/32 filters.

The paper upsamples with bicubic first and runs the three convs in HR space;
here the bicubic step (MATLAB-compatible, as in the paper) is part of the
module so that it maps LR to HR like every other model. Convs are padded
('same') so the output keeps the upsampled size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SRCNN(nn.Module):
    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: tuple[int, int] = (64, 32),
        kernel_sizes: tuple[int, int, int] = (9, 5, 5),
    ):
        super().__init__()
        self.scale = scale
        k1, k2, k3 = kernel_sizes
        self.conv1 = nn.Conv2d(num_in_ch, num_feat[0], k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(num_feat[0], num_feat[1], k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(num_feat[1], num_out_ch, k3, padding=k3 // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pipeline.inference.resize import resize_torch

        h, w = x.shape[-2:]
        x = resize_torch(x, (h * self.scale, w * self.scale), kernel="cubic")
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.conv3(x)
