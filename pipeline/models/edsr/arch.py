"""EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image
Super-Resolution", CVPRW 2017), module and key names exactly as BasicSR's
`basicsr/archs/edsr_arch.py`, so BasicSR checkpoints load with strict keys."""

from __future__ import annotations

import torch
from torch import nn

from ..common import DIV2K_RGB_MEAN, MeanShiftRange, Upsample


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv with the residual scaled by res_scale (0.1 stabilises
    training of the wide 256-feature model, per the paper)."""

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class EDSR(nn.Module):
    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN,
    ):
        super().__init__()
        self.norm = MeanShiftRange(rgb_mean, img_range)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self.norm.normalise(x))
        x = x + self.conv_after_body(self.body(x))
        return self.norm.denormalise(self.conv_last(self.upsample(x)))
