"""RCAN (Zhang et al., "Image Super-Resolution Using Very Deep Residual
Channel Attention Networks", ECCV 2018), module and key names exactly as
BasicSR's `basicsr/archs/rcan_arch.py`.

Channel attention pools over the whole input, so a tile's features are
re-weighted by the tile's statistics, not the image's: tiled inference never
equals whole-image inference exactly for RCAN (nor for SwinIR-like models
with attention), however large the overlap.
"""

from __future__ import annotations

import torch
from torch import nn

from ..common import DIV2K_RGB_MEAN, MeanShiftRange, Upsample


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global average pool, bottleneck, sigmoid gate."""

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class RCAB(nn.Module):
    """Residual channel attention block: conv-ReLU-conv-attention plus skip."""

    def __init__(self, num_feat: int, squeeze_factor: int = 16, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.rcab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            nn.ReLU(True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1),
            ChannelAttention(num_feat, squeeze_factor),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rcab(x) * self.res_scale


class ResidualGroup(nn.Module):
    """num_block RCABs and a conv, with a skip around the group."""

    def __init__(self, num_feat: int, num_block: int, squeeze_factor: int = 16, res_scale: float = 1.0):
        super().__init__()
        self.residual_group = nn.Sequential(*(RCAB(num_feat, squeeze_factor, res_scale) for _ in range(num_block)))
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.residual_group(x))


class RCAN(nn.Module):
    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_group: int = 10,
        num_block: int = 16,
        squeeze_factor: int = 16,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN,
    ):
        super().__init__()
        self.norm = MeanShiftRange(rgb_mean, img_range)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(
            *(ResidualGroup(num_feat, num_block, squeeze_factor, res_scale) for _ in range(num_group))
        )
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(scale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self.norm.normalise(x))
        x = x + self.conv_after_body(self.body(x))
        return self.norm.denormalise(self.conv_last(self.upsample(x)))
