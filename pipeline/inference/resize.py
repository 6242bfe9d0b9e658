"""MATLAB-compatible image resizing.

Why not PIL or torch's bicubic: SR benchmarks (Set5, Set14, ...) were made
with MATLAB's `imresize`, whose cubic kernel (a=-0.5), antialiasing (the kernel
is widened when downscaling), symmetric border handling and per-pass rounding
for integer images differ from other libraries. PSNR figures are only
comparable to published ones when the LR images are made the MATLAB way.

`imresize` mirrors MATLAB for numpy images (bit-exact on Set5/Set14 LR files);
`resize_torch` applies the same resampling to float NCHW tensors on any
device, differentiably. Both are separable and banded: an output value reads
only its kernel's taps (4 for bicubic upscaling, 4 / scale when downscaling),
gathered, never a dense output x input matrix; `ResizePlan` lets a caller
produce the output band by band (bounded memory, a deadline checked between
bands).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
import scipy.sparse
import torch


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * (
        (1 < ax) & (ax <= 2)
    )


def _lanczos(a: int):
    def kernel(x: np.ndarray) -> np.ndarray:
        # MATLAB adds eps to numerator and denominator to avoid 0/0 at x=0.
        eps = np.finfo(np.float64).eps
        f = (np.sin(np.pi * x) * np.sin(np.pi * x / a) + eps) / ((np.pi**2 * x**2 / a) + eps)
        return f * (np.abs(x) < a)

    return kernel


def _triangle(x: np.ndarray) -> np.ndarray:
    return (x + 1) * ((-1 <= x) & (x < 0)) + (1 - x) * ((0 <= x) & (x <= 1))


# name -> (kernel function, kernel width), as in MATLAB's imresize.
KERNELS = {
    "cubic": (_cubic, 4.0),
    "lanczos2": (_lanczos(2), 4.0),
    "lanczos3": (_lanczos(3), 6.0),
    "linear": (_triangle, 2.0),
}


@lru_cache(maxsize=256)
def contributions(
    in_length: int, out_length: int, scale: float, kernel: str = "cubic", antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Port of MATLAB's contributions(): for every output pixel, the input
    indices (0-based, borders mirrored) and the normalised weights, both
    shaped (out_length, taps). Cached, so callers must not modify them."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {sorted(KERNELS)}")
    func, width = KERNELS[kernel]
    if scale < 1 and antialias:
        # Widen the kernel so that downscaling also low-pass filters.
        def h(x):
            return scale * func(scale * x)

        width = width / scale
    else:
        h = func
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = h(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    keep = np.any(weights != 0, axis=0)
    weights, indices = weights[:, keep], indices[:, keep]
    weights.setflags(write=False)
    indices.setflags(write=False)
    return indices, weights


_BLOCK_ELEMENTS = 1 << 16  # float64 values per block: 512 KiB, stays in cache


@lru_cache(maxsize=256)
def _matrix(in_length: int, out_length: int, scale: float, kernel: str, antialias: bool) -> scipy.sparse.csr_matrix:
    """contributions() as a sparse (out, in) matrix whose rows keep the taps in MATLAB's order,
    a border's mirrored duplicates included (not summed): its product adds exactly the terms, in
    exactly the order, of a loop over the taps (float64 results bit-identical), three times as
    fast (768 x 512 RGB to 192 x 128: 7.3 -> 2.7 ms) and without a gathered copy per tap."""
    indices, weights = contributions(in_length, out_length, scale, kernel, antialias)
    taps = indices.shape[1]
    return scipy.sparse.csr_matrix((weights.ravel(), indices.ravel(), np.arange(0, out_length * taps + 1, taps)),
                                   shape=(out_length, in_length))


def _weighted_sum(matrix: scipy.sparse.csr_matrix, src: np.ndarray, dtype) -> np.ndarray:
    """matrix @ src (src 2-D, in float64). Unsigned integer results are rounded half away
    from zero and clipped, as imresizemex does."""
    acc = matrix @ src.astype(np.float64, copy=False)
    if np.issubdtype(dtype, np.integer):
        np.clip(acc, 0, np.iinfo(dtype).max, out=acc)
        np.floor(acc + 0.5, out=acc)  # half away from zero, as values are >= 0
    return acc


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float, kernel: str, antialias: bool, dtype):
    """One 1-D pass along `axis`, result in `dtype`. Works on blocks (of columns, or for the
    width pass of rows, transposed) so that the float64 temporaries stay in cache."""
    matrix = _matrix(img.shape[axis], out_length, scale, kernel, antialias)
    out_shape = list(img.shape)
    out_shape[axis] = out_length
    out = np.empty(out_shape, dtype=dtype)
    if axis == 0:
        src, dst = img.reshape(img.shape[0], -1), out.reshape(out_length, -1)
        step = max(1, _BLOCK_ELEMENTS // max(img.shape[0], out_length))
        for c0 in range(0, src.shape[1], step):
            dst[:, c0 : c0 + step] = _weighted_sum(matrix, src[:, c0 : c0 + step], dtype)
    else:
        rest = math.prod(img.shape[2:])
        step = max(1, _BLOCK_ELEMENTS // max(1, max(img.shape[1], out_length) * rest))
        for r0 in range(0, img.shape[0], step):
            block = img[r0 : r0 + step].swapaxes(0, 1)  # (in, rows, ...)
            rows = block.shape[1]
            result = _weighted_sum(matrix, block.reshape(img.shape[1], rows * rest), dtype)
            out[r0 : r0 + step] = result.reshape(out_length, rows, *img.shape[2:]).swapaxes(0, 1)
    return out


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    *,
    output_size: tuple[int, int] | None = None,
    kernel: str = "cubic",
    antialias: bool = True,
) -> np.ndarray:
    """Resize an HxW or HxWxC image exactly as MATLAB's imresize.

    Give either `scale` (output size ceil(in * scale)) or `output_size`
    (height, width). Integer images (uint8, uint16) come back in their dtype,
    rounded after each pass; float images stay float (not rounded).
    """
    if (scale is None) == (output_size is None):
        raise ValueError("give exactly one of scale or output_size")
    if img.ndim not in (2, 3):
        raise ValueError(f"expected HxW or HxWxC, got shape {img.shape}")
    dtype = img.dtype
    if not (np.issubdtype(dtype, np.unsignedinteger) or np.issubdtype(dtype, np.floating)):
        raise TypeError(f"unsupported dtype {dtype}; expected unsigned integer or float")
    in_hw = img.shape[:2]
    if output_size is None:
        scales = (float(scale), float(scale))
        out_hw = tuple(int(math.ceil(n * scale)) for n in in_hw)
    else:
        out_hw = tuple(int(n) for n in output_size)
        scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    if min(out_hw) < 1:
        raise ValueError(f"output size {out_hw} is empty")
    # MATLAB: dimension with the smaller scale first (stable sort, so rows on ties).
    first, second = sorted((0, 1), key=lambda a: scales[a])
    # Integer images are rounded after each pass; float ones keep float64 in between.
    between = dtype if np.issubdtype(dtype, np.integer) else np.float64
    out = _resize_axis(img, first, out_hw[first], scales[first], kernel, antialias, between)
    return _resize_axis(out, second, out_hw[second], scales[second], kernel, antialias, dtype)


# ------------------------------------------------------------------ torch

_BAND_ELEMENTS = 1 << 20  # values per band and pass: 8 MiB in float64 (faster than larger or smaller bands)


@lru_cache(maxsize=64)
def _taps(in_length: int, out_length: int, kernel: str, antialias: bool, device: str, dtype: torch.dtype):
    """contributions() as tensors on `device`: (indices, weights), each (out, taps)."""
    indices, weights = contributions(in_length, out_length, out_length / in_length, kernel, antialias)
    return (torch.from_numpy(indices.astype(np.int64)).to(device),
            torch.from_numpy(weights.copy()).to(device=device, dtype=dtype))


def _gather_sum(x: torch.Tensor, dim: int, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t weights[:, t] * x.index_select(dim, indices[:, t]) for dim -2 or -1,
    the taps added in MATLAB's order (as imresize adds them: float64 results are
    bit-identical). Without autograd, in place, and along the width on the
    transposed band, so that every tap copies whole contiguous rows."""
    if x.requires_grad and torch.is_grad_enabled():
        shape = (-1, 1) if dim == -2 else (-1,)
        acc = x.index_select(dim, indices[:, 0]) * weights[:, 0].reshape(shape)
        for t in range(1, indices.shape[1]):
            acc = acc + x.index_select(dim, indices[:, t]) * weights[:, t].reshape(shape)
        return acc
    if dim == -1:
        return _gather_rows(x.transpose(-1, -2), indices, weights).transpose(-1, -2)
    return _gather_rows(x, indices, weights)


def _gather_rows(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    acc = x.index_select(-2, indices[:, 0]).mul_(weights[:, 0, None])
    tmp = torch.empty_like(acc)
    for t in range(1, indices.shape[1]):
        torch.index_select(x, -2, indices[:, t], out=tmp)
        acc.add_(tmp.mul_(weights[:, t, None]))
    return acc


class ResizePlan:
    """A MATLAB-style resize of (..., in_h, in_w) to out_hw, computed in bands
    of output rows. Why bands: each output value reads only its few taps, so a
    band needs only the input rows under it, and memory stays a band's worth
    whatever the image size (a dense weight matrix for a 1 x 65537 image would
    be 64 GiB). The values do not depend on the banding."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: str = "cubic",
                 antialias: bool = True, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
        self.in_h, self.in_w = int(in_hw[0]), int(in_hw[1])
        self.out_h, self.out_w = int(out_hw[0]), int(out_hw[1])
        if min(self.in_h, self.in_w, self.out_h, self.out_w) < 1:
            raise ValueError(f"cannot resize {tuple(in_hw)} to {tuple(out_hw)}")
        key = (kernel, antialias, str(device), dtype)
        self.h_idx, self.h_w = _taps(self.in_h, self.out_h, *key)
        self.w_idx, self.w_w = _taps(self.in_w, self.out_w, *key)
        # MATLAB: the dimension with the smaller scale first (rows on ties).
        self.rows_first = not (self.out_w / self.in_w < self.out_h / self.in_h)
        self._h_np = contributions(self.in_h, self.out_h, self.out_h / self.in_h, kernel, antialias)[0]

    def bands(self, planes: int = 1, elements: int | None = None) -> list[tuple[int, int]]:
        """Output row ranges whose largest temporary holds about `elements`
        values (default _BAND_ELEMENTS)."""
        elements = elements or _BAND_ELEMENTS
        wide = planes * max(self.in_w, self.out_w)
        if self.rows_first:  # temporaries: step x in_w, then step x out_w
            step = elements // wide
        else:  # the width pass covers the step's input rows: step * in_h / out_h + taps
            step = (elements / wide - self.h_idx.shape[1]) * self.out_h / self.in_h
        step = max(1, int(step))
        return [(r0, min(self.out_h, r0 + step)) for r0 in range(0, self.out_h, step)]

    def input_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """The input rows [lo, hi) that output rows [r0, r1) read."""
        band = self._h_np[r0:r1]
        return int(band.min()), int(band.max()) + 1

    def rows(self, x: torch.Tensor, r0: int, r1: int, lo: int = 0) -> torch.Tensor:
        """Output rows [r0, r1) from `x`, the input rows from `lo` on (at least
        up to input_rows(r0, r1)[1])."""
        h_idx, h_w = self.h_idx[r0:r1] - lo, self.h_w[r0:r1]
        if self.rows_first:
            return _gather_sum(_gather_sum(x, -2, h_idx, h_w), -1, self.w_idx, self.w_w)
        hi = self.input_rows(r0, r1)[1] - lo
        return _gather_sum(_gather_sum(x[..., :hi, :], -1, self.w_idx, self.w_w), -2, h_idx, h_w)


def resize_torch(
    x: torch.Tensor, out_hw: tuple[int, int], kernel: str = "cubic", antialias: bool = True,
    *, check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """MATLAB-style resize of a float NCHW tensor to out_hw (no rounding,
    differentiable). Same passes, pass order and tap order as `imresize`, in
    bands of output rows; `check` (e.g. a deadline) is called before each band."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float NCHW tensor, got {x.dtype} {tuple(x.shape)}")
    plan = ResizePlan(x.shape[-2:], out_hw, kernel, antialias, x.device, x.dtype)
    bands = plan.bands(x.shape[0] * x.shape[1])
    out = None
    for r0, r1 in bands:
        if check is not None:
            check()
        lo, hi = plan.input_rows(r0, r1)
        band = plan.rows(x[..., lo:hi, :], r0, r1, lo)
        if len(bands) == 1:
            return band.contiguous()
        if out is None:
            out = band.new_empty(*x.shape[:2], plan.out_h, plan.out_w)
        out[..., r0:r1, :] = band
    return out
