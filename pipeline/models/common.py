"""Pieces shared by the BasicSR-style architectures (EDSR, RCAN) and helpers
for reading hyper-parameters off state-dict shapes."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

# Mean RGB of DIV2K: BasicSR and EDSR-PyTorch subtract it before the network.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def default_mean(channels: int) -> tuple[float, ...]:
    """DIV2K's RGB mean; for other channel counts (our own grayscale models),
    its average in every channel."""
    if channels == 3:
        return DIV2K_RGB_MEAN
    return (round(sum(DIV2K_RGB_MEAN) / 3, 4),) * channels


class Upsample(nn.Sequential):
    """BasicSR's Upsample: log2(scale) x [conv to 4*num_feat, PixelShuffle(2)]
    for powers of two, conv to 9*num_feat + PixelShuffle(3) for x3. The convs
    sit at indices 0, 2, ... so the keys match BasicSR's checkpoints."""

    def __init__(self, scale: int, num_feat: int):
        layers: list[nn.Module] = []
        if scale >= 2 and scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale {scale} is not supported; supported scales: 2^n and 3")
        super().__init__(*layers)


def seq_len(state_dict: dict, prefix: str) -> int:
    """Length of an nn.Sequential stored under `prefix` (1 + its highest index)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = [int(m.group(1)) for k in state_dict if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0


def upsample_scale(state_dict: dict, prefix: str, num_feat: int) -> int | None:
    """The scale of an Upsample stored under `prefix`, from its convs' widths."""
    convs = [state_dict.get(f"{prefix}.{i}.weight") for i in range(0, seq_len(state_dict, prefix), 2)]
    if not convs or any(c is None for c in convs):
        return None
    widths = {c.shape[0] for c in convs}
    if widths == {4 * num_feat}:
        return 2 ** len(convs)
    if widths == {9 * num_feat} and len(convs) == 1:
        return 3
    return None


class MeanShiftRange(nn.Module):
    """BasicSR's input/output normalisation: (x - mean) * img_range before the
    network, y / img_range + mean after it, so the weights see the 0..255
    mean-free images they were trained on while callers use [0, 1]."""

    def __init__(self, rgb_mean: tuple[float, ...], img_range: float):
        super().__init__()
        self.img_range = float(img_range)
        # Not persistent: BasicSR keeps the mean out of its state dict.
        self.register_buffer("mean", torch.tensor(rgb_mean).view(1, -1, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) * self.img_range

    def denormalise(self, y: torch.Tensor) -> torch.Tensor:
        return y / self.img_range + self.mean.to(y.dtype)
