"""MATLAB-compatible image resizing.

Why not PIL or torch's bicubic: SR benchmarks (Set5, Set14, ...) were made
with MATLAB's `imresize`, whose cubic kernel (a=-0.5), antialiasing (the kernel
is widened when downscaling), symmetric border handling and per-pass rounding
for integer images differ from other libraries. PSNR figures are only
comparable to published ones when the LR images are made the MATLAB way.

`imresize` mirrors MATLAB for numpy images (bit-exact on Set5/Set14 LR files);
`resize_torch` applies the same resampling to float NCHW tensors as two
matrix products, so it runs on any device and is differentiable.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
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


def _weighted_sum(src: np.ndarray, indices: np.ndarray, weights: np.ndarray, dtype) -> np.ndarray:
    """sum_t weights[:, t] * src[indices[:, t]] along axis 0, in float64 with the
    taps added in MATLAB's order. Unsigned integer results are rounded half
    away from zero and clipped, as imresizemex does."""
    shape = (len(indices),) + (1,) * (src.ndim - 1)
    acc = weights[:, 0].reshape(shape) * src[indices[:, 0]]
    tmp = np.empty_like(acc)
    for t in range(1, indices.shape[1]):
        np.multiply(weights[:, t].reshape(shape), src[indices[:, t]], out=tmp)
        acc += tmp
    if np.issubdtype(dtype, np.integer):
        np.clip(acc, 0, np.iinfo(dtype).max, out=acc)
        np.floor(acc + 0.5, out=acc)  # half away from zero, as values are >= 0
    return acc


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float, kernel: str, antialias: bool, dtype):
    """One 1-D pass along `axis`, result in `dtype`. Works on blocks of rows so
    that the float64 temporaries (and, for the width pass, the transposed
    block) stay in cache: several times faster than whole-image operations."""
    indices, weights = contributions(img.shape[axis], out_length, scale, kernel, antialias)
    out_shape = list(img.shape)
    out_shape[axis] = out_length
    out = np.empty(out_shape, dtype=dtype)
    if axis == 0:
        step = max(1, _BLOCK_ELEMENTS // max(1, math.prod(img.shape[1:])))
        for r0 in range(0, out_length, step):
            rows = slice(r0, r0 + step)
            out[rows] = _weighted_sum(img, indices[rows], weights[rows], dtype)
    else:
        step = max(1, _BLOCK_ELEMENTS // max(1, math.prod(out_shape[1:])))
        for r0 in range(0, img.shape[0], step):
            rows = slice(r0, r0 + step)
            block = np.ascontiguousarray(img[rows].swapaxes(0, 1))
            out[rows] = _weighted_sum(block, indices, weights, dtype).swapaxes(0, 1)
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


@lru_cache(maxsize=64)
def _weight_matrix(
    in_length: int, out_length: int, kernel: str, antialias: bool, device: str, dtype: torch.dtype
) -> torch.Tensor:
    """Dense (out, in) matrix of the contributions() weights; mirrored
    indices that repeat have their weights added."""
    indices, weights = contributions(in_length, out_length, out_length / in_length, kernel, antialias)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), indices.shape[1])
    np.add.at(matrix, (rows, indices.ravel()), weights.ravel())
    return torch.from_numpy(matrix).to(device=device, dtype=dtype)


def resize_torch(
    x: torch.Tensor, out_hw: tuple[int, int], kernel: str = "cubic", antialias: bool = True
) -> torch.Tensor:
    """MATLAB-style resize of a float NCHW tensor to out_hw (no rounding,
    differentiable). Same passes and pass order as `imresize`."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float NCHW tensor, got {x.dtype} {tuple(x.shape)}")
    in_h, in_w = x.shape[-2:]
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    key = (kernel, antialias, str(x.device), x.dtype)
    wh = _weight_matrix(in_h, out_h, *key)
    ww = _weight_matrix(in_w, out_w, *key)
    if out_w / in_w < out_h / in_h:
        x = torch.einsum("pw,nchw->nchp", ww, x)
        return torch.einsum("oh,nchw->ncow", wh, x)
    x = torch.einsum("oh,nchw->ncow", wh, x)
    return torch.einsum("pw,nchw->nchp", ww, x)
