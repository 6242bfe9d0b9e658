"""Sliding-window tiling: cut an image into overlapping tiles and blend the
upscaled tiles back with a smooth window.

Why a smooth window and not a hard crop: a hard crop leaves a visible seam
wherever two tiles disagree. Why not a plain Gaussian over the whole tile (as
MONAI does by default): SR networks see zero padding at a tile's edge, so the
outermost pixels of every tile are wrong, and a Gaussian still gives them some
weight. The window used here is zero for the first quarter of the overlap at an
inner edge (the contaminated band is never used), rises as a raised cosine over
the middle half, and is one elsewhere. Two neighbours' ramps sum to exactly one,
so when a quarter of the overlap covers the model's receptive field the blended
result equals whole-image inference up to float rounding. Edges that lie on
the image border keep weight one: there the tile sees the same border as the
whole image does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """An input window [y0:y1, x0:x1] and which of its sides are inside the image."""

    y0: int
    y1: int
    x0: int
    x1: int
    inner_top: bool
    inner_bottom: bool
    inner_left: bool
    inner_right: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis; the last tile is aligned to the end."""
    if tile <= 0 or length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Cover an image with tiles of at most `tile` x `tile` input pixels
    (0 means one tile for the whole image), neighbours sharing at least
    `overlap` pixels."""
    if tile > 0 and overlap * 2 > tile:
        raise ValueError(f"overlap {overlap} must be at most half the tile size {tile}")
    tiles = []
    ys, xs = _starts(height, tile, overlap), _starts(width, tile, overlap)
    for y0 in ys:
        y1 = min(height, y0 + tile) if tile > 0 else height
        for x0 in xs:
            x1 = min(width, x0 + tile) if tile > 0 else width
            tiles.append(Tile(y0, y1, x0, x1, y0 > 0, y1 < height, x0 > 0, x1 < width))
    return tiles


def _ramp(length: int, overlap: int, inner_start: bool, inner_end: bool) -> torch.Tensor:
    """1-D window: 0 over the first quarter of the overlap at an inner edge,
    a raised cosine over the next half, 1 in the middle."""
    weight = torch.ones(length, dtype=torch.float64)
    margin, ramp = overlap // 4, overlap - 2 * (overlap // 4)
    if overlap <= 0 or ramp <= 0:
        return weight.float()
    d = torch.arange(length, dtype=torch.float64)
    rising = 0.5 - 0.5 * torch.cos(torch.pi * ((d - margin + 0.5) / ramp).clamp(0, 1))
    if inner_start:
        weight = weight * rising
    if inner_end:
        weight = weight * rising.flip(0)
    return weight.float()


def blend_window(tile: Tile, scale: int, overlap: int) -> torch.Tensor:
    """The (H*scale, W*scale) blending weights of one upscaled tile."""
    h, w = tile.shape
    wy = _ramp(h * scale, overlap * scale, tile.inner_top, tile.inner_bottom)
    wx = _ramp(w * scale, overlap * scale, tile.inner_left, tile.inner_right)
    return wy[:, None] * wx[None, :]


class Stitcher:
    """Accumulates weighted upscaled tiles of one image and normalises at the end.
    The accumulators live on `device`: on a GPU the tiles never leave it, and
    only the finished, quantised image is copied back. A tile over the whole image
    (an image run whole) is the result as it is: its window is all ones, and
    blending it would cost four passes over the output for the same values."""

    def __init__(self, channels: int, height: int, width: int, scale: int, overlap: int,
                 device: torch.device | str = "cpu"):
        self.scale, self.overlap, self.device = scale, overlap, torch.device(device)
        self.shape = (channels, height * scale, width * scale)
        self.out: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.whole: torch.Tensor | None = None
        self.windows: dict[tuple, torch.Tensor] = {}  # most tiles share one of a few windows

    def add(self, tile: Tile, upscaled: torch.Tensor) -> None:
        """Add one upscaled tile (C, h*scale, w*scale), float32."""
        s = self.scale
        if self.out is None and self.whole is None and (tile.y0, tile.x0, *tile.shape) == (0, 0, *(
                n // s for n in self.shape[1:])):
            # A copy: the tile may be a view of a buffer the next forward pass reuses (CUDA graphs).
            self.whole = upscaled.to(self.device, copy=True)
            return
        if self.out is None:
            self.out = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
            self.weight = torch.zeros(1, *self.shape[1:], dtype=torch.float32, device=self.device)
            if self.whole is not None:
                self.out += self.whole
                self.weight += 1.0
                self.whole = None
        key = (tile.shape, tile.inner_top, tile.inner_bottom, tile.inner_left, tile.inner_right)
        if key not in self.windows:
            self.windows[key] = blend_window(tile, s, self.overlap).to(self.device)
        window = self.windows[key]
        region = (slice(None), slice(tile.y0 * s, tile.y1 * s), slice(tile.x0 * s, tile.x1 * s))
        self.out[region] += upscaled.to(self.device) * window
        self.weight[region] += window

    def result(self) -> torch.Tensor:
        if self.out is None:
            if self.whole is None:
                raise ValueError("no tile was added")
            return self.whole
        return self.out / self.weight.clamp_min(1e-12)
