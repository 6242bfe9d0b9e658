"""Bicubic and Lanczos upscaling as parameter-free models: the baselines every
SR result is compared against, and a fallback that needs no weights. They
use the MATLAB-compatible `pipeline.inference.resize`, as SR benchmarks do."""

from __future__ import annotations

import torch
from torch import nn


class Interpolation(nn.Module):
    """Resizes NCHW by an integer scale with a fixed kernel; any channel count.

    `overlap` (input pixels) is 4 x the kernel radius: an HR pixel reads only
    LR pixels within the radius and the tiler discards the outer quarter of
    the overlap, so tiled output equals whole-image output.
    """

    kernel = "cubic"
    overlap = 8  # radius 2

    def __init__(self, scale: int = 4):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from pipeline.inference.resize import resize_torch  # imported late: only needed when run

        h, w = x.shape[-2:]
        return resize_torch(x, (h * self.scale, w * self.scale), kernel=self.kernel)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, kernel={self.kernel!r}"


class Bicubic(Interpolation):
    kernel = "cubic"
    overlap = 8  # radius 2


class Lanczos(Interpolation):
    kernel = "lanczos3"
    overlap = 12  # radius 3


INTERPOLATIONS = {"bicubic": Bicubic, "lanczos": Lanczos}
