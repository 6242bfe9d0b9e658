"""ESPCN (Shi et al., "Real-Time Single Image and Video Super-Resolution
Using an Efficient Sub-Pixel Convolutional Neural Network", CVPR 2016).

All convs run at LR resolution and a pixel shuffle (the "sub-pixel
convolution") makes the HR image; tanh activations as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn


class ESPCN(nn.Module):
    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: tuple[int, int] = (64, 32),
        kernel_sizes: tuple[int, int, int] = (5, 3, 3),
    ):
        super().__init__()
        k1, k2, k3 = kernel_sizes
        self.conv1 = nn.Conv2d(num_in_ch, num_feat[0], k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(num_feat[0], num_feat[1], k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(num_feat[1], num_out_ch * scale * scale, k3, padding=k3 // 2)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.shuffle(self.conv3(x))
