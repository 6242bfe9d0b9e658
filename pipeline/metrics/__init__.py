"""Image quality metrics, computed the way SR papers compute them.

PSNR and SSIM follow the common protocol (BasicSR / the MATLAB reference
code): Y channel of ITU-R BT.601 YCbCr, `shave` border pixels cropped, no
rounding of Y, so numbers are comparable with published tables. `lr_psnr`
needs no ground truth, so it can score archive images that have no HR
version. LPIPS is the `lpips` package (v0.1, AlexNet) with torchvision's
AlexNet weights taken from its cache only: nothing is downloaded.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import correlate1d

from pipeline.inference.resize import imresize

def _dtype_range(dtype: np.dtype) -> float:
    """Peak value for a dtype: integer max, 1.0 for float."""
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y of BT.601 YCbCr, Y = 16 + (65.481 R + 128.553 G + 24.966 B)/255 on
    the 8-bit scale (R, G, B in 0..255), returned as float64 on the input's
    own scale (0..255, 0..65535, or 0..1 for float). Single-channel input is
    returned as is; a fourth (alpha) channel is ignored."""
    img = np.asarray(img)
    if img.ndim == 2 or img.shape[2] == 1:
        return img.astype(np.float64)
    if img.shape[2] not in (3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got shape {img.shape}")
    peak = _dtype_range(img.dtype)
    rgb = img[..., :3].astype(np.float64) / peak
    y = 16.0 + rgb @ np.array([65.481, 128.553, 24.966])
    return y * (peak / 255.0)


def _prepare(a: np.ndarray, b: np.ndarray, data_range, y_channel: bool, shave: int):
    """Shared PSNR/SSIM front end: shape check, crop, optional Y, float64."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if data_range is None:
        data_range = _dtype_range(a.dtype)
    if shave:
        a, b = a[shave:-shave, shave:-shave], b[shave:-shave, shave:-shave]
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a.astype(np.float64), b.astype(np.float64), float(data_range)


def psnr(a: np.ndarray, b: np.ndarray, *, data_range=None, y_channel: bool = False, shave: int = 0) -> float:
    """Peak signal-to-noise ratio in dB; math.inf for identical images."""
    a, b, data_range = _prepare(a, b, data_range, y_channel, shave)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return math.inf
    return float(10 * np.log10(data_range**2 / mse))


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only the 'valid' region (as the
    MATLAB reference's filter2(..., 'valid'))."""
    out = correlate1d(correlate1d(img, g, axis=0), g, axis=1)
    r = len(g) // 2
    return out[r:-r, r:-r]


def _ssim_2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    g = _gaussian_1d()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, *, data_range=None, y_channel: bool = False, shave: int = 0) -> float:
    """SSIM of Wang et al. 2004 (11x11 Gaussian window, sigma 1.5, K1=0.01,
    K2=0.03, valid region), averaged over channels."""
    a, b, data_range = _prepare(a, b, data_range, y_channel, shave)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels, got {a.shape[:2]}")
    if a.ndim == 2:
        return _ssim_2d(a, b, data_range)
    return float(np.mean([_ssim_2d(a[..., c], b[..., c], data_range) for c in range(a.shape[2])]))


def lr_psnr(output: np.ndarray, lr_input: np.ndarray, *, valid: np.ndarray | None = None,
            data_range: float | None = None, bands: list[int] | None = None) -> float:
    """No-reference consistency score: PSNR between the input and the output
    bicubically downscaled back to the input size. A faithful upscaler keeps
    this high; one that invents or shifts content does not.

    Computed on the native values (no conversion to 8 bit): the peak is the
    type's maximum (255, 65535), or `data_range` when given (e.g. 4095 for
    12-bit DICOM, 65535 for int16); for float data, the input's range when it
    exceeds [0, 1]. With `valid` (H x W of the input), only valid pixels count,
    shrunk by the 2-pixel reach of the bicubic kernel so that no nodata output
    pixel takes part; `bands` restricts the channels (e.g. no alpha band)."""
    output, lr_input = np.asarray(output), np.asarray(lr_input)
    if output.dtype != lr_input.dtype:
        raise ValueError(f"output dtype {output.dtype} differs from input dtype {lr_input.dtype}")
    if output.ndim == 2 and lr_input.ndim == 3:
        output = output[..., None]
    elif output.ndim == 3 and lr_input.ndim == 2:
        lr_input = lr_input[..., None]
    if output.ndim != lr_input.ndim or output.shape[2:] != lr_input.shape[2:]:
        raise ValueError(f"channel mismatch: {output.shape} vs {lr_input.shape}")
    if valid is None and bands is None:
        down = imresize(output.astype(np.float64), output_size=lr_input.shape[:2])
        ref = lr_input.astype(np.float64)
        if data_range is None:
            data_range = _dtype_range(lr_input.dtype)
            if not np.issubdtype(lr_input.dtype, np.integer) and ref.max() > 1.0:
                data_range = float(ref.max() - ref.min()) or 1.0
        return psnr(down, ref, data_range=data_range)
    whole = (slice(None), slice(None))
    sse, count, lo, hi = lr_window_errors(output, lr_input, valid, whole, bands)
    if not count:
        return math.nan
    if data_range is None:
        data_range = _dtype_range(lr_input.dtype)
        if not np.issubdtype(lr_input.dtype, np.integer) and hi > 1.0:
            data_range = (hi - lo) or 1.0
    mse = sse / count
    return math.inf if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def shrink_valid(valid: np.ndarray, reach: int = 2) -> np.ndarray:
    """Valid pixels at least `reach` pixels from any invalid one (image borders do not count)."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(valid, structure=np.ones((2 * reach + 1, 2 * reach + 1), bool), border_value=1)


def lr_window_errors(output: np.ndarray, lr_input: np.ndarray, valid: np.ndarray | None, core,
                     bands: list[int] | None = None) -> tuple[float, int, float, float]:
    """(sum of squared errors, values compared, input min, input max) of `lr_psnr` over
    the `core` (a pair of slices) of one window: the whole output window is downscaled,
    so the core's values equal those of the whole image when the window's margin
    exceeds the kernel's reach. Lets a streamed image's lr_psnr be summed window by window."""
    output = output[..., None] if output.ndim == 2 else output
    lr_input = lr_input[..., None] if lr_input.ndim == 2 else lr_input
    if bands is not None and len(bands) < lr_input.shape[2]:
        output, lr_input = output[..., bands], lr_input[..., bands]
    # band by band: a quarter of the float64 temporaries of a 4-band window
    down = np.stack([imresize(output[..., k].astype(np.float64), output_size=lr_input.shape[:2])[core]
                     for k in range(output.shape[2])], axis=2)
    ref = lr_input[core].astype(np.float64)
    keep = np.isfinite(ref).all(axis=2) & np.isfinite(down).all(axis=2)
    if valid is not None:
        keep &= shrink_valid(valid)[core]
    if not keep.any():
        return 0.0, 0, math.inf, -math.inf
    diff = down[keep] - ref[keep]
    values = ref[keep]
    return float(np.sum(diff * diff)), int(diff.size), float(values.min()), float(values.max())


def psnr_bands(a: np.ndarray, b: np.ndarray, *, data_range: float, shave: int = 0,
               valid: np.ndarray | None = None) -> list[float]:
    """PSNR of each band (channel) separately, on valid pixels when a mask is given."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    a = a[..., None] if a.ndim == 2 else a
    b = b[..., None] if b.ndim == 2 else b
    keep = np.ones(a.shape[:2], bool) if valid is None else valid.copy()
    if shave:
        keep[:shave], keep[-shave:], keep[:, :shave], keep[:, -shave:] = False, False, False, False
    out = []
    for k in range(a.shape[2]):
        mse = float(np.mean((a[..., k][keep] - b[..., k][keep]) ** 2)) if keep.any() else math.nan
        out.append(math.inf if mse == 0 else float(10 * np.log10(data_range**2 / mse)))
    return out


def sam_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """Mean spectral angle (degrees) between per-pixel band vectors of two
    HxWxC images (C >= 2). Pixels where either vector is zero are skipped,
    since their angle is undefined; 0.0 when no pixel is left."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] < 2:
        raise ValueError(f"expected two HxWxC images with C >= 2, got {a.shape} and {b.shape}")
    dot = np.sum(a * b, axis=2)
    norms = np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2)
    valid = norms > 0
    if not valid.any():
        return 0.0
    cos = np.clip(dot[valid] / norms[valid], -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean())


# ---------------------------------------------------------------- LPIPS

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet ImageNet weights, as its hub cache names them


def alexnet_weights_path() -> Path:
    """Where torchvision keeps its downloaded AlexNet weights (torch hub cache,
    TORCH_HOME honoured): the file `lpips` would use, read at each call so a
    changed TORCH_HOME is seen."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


@lru_cache(maxsize=4)
def _cached_lpips(backbone: str, device: str):
    """The `lpips` package's own model, built with a random trunk (so
    torchvision downloads nothing) and the trunk then loaded from `backbone`;
    the linear layers are the package's bundled weights/v0.1/alex.pth."""
    import warnings

    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    state = torch.load(backbone, map_location="cpu", weights_only=True)
    # lpips keeps torchvision's layer numbers inside its slices: "slice2.3.weight" <- "features.3.weight"
    model.net.load_state_dict({k: state["features." + k.split(".", 1)[1]] for k in model.net.state_dict()})
    return model.to(device).eval()


def _to_lpips_tensor(img: np.ndarray, device: str) -> torch.Tensor:
    """HxW[xC] image of any supported dtype -> 1x3xHxW tensor in [-1, 1]."""
    img = np.asarray(img)
    x = img.astype(np.float32) / _dtype_range(img.dtype)
    if x.ndim == 2:
        x = x[..., None]
    x = x[..., :3] if x.shape[2] >= 3 else np.repeat(x[..., :1], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].to(device) * 2 - 1


def lpips_value(sr: np.ndarray, hr: np.ndarray) -> tuple[float | None, str | None]:
    """LPIPS (AlexNet, v0.1) between two images, or (None, reason) when
    torchvision's AlexNet weights are not in its cache: we never download, so
    callers report the metric as skipped instead of failing the image."""
    backbone = alexnet_weights_path()
    if not backbone.is_file():
        return None, f"LPIPS needs torchvision's AlexNet weights in {backbone}; not downloaded"
    from pipeline.inference.engine import pick_device

    device = str(pick_device("auto"))
    model = _cached_lpips(str(backbone.resolve()), device)
    with torch.no_grad():
        value = model(_to_lpips_tensor(sr, device), _to_lpips_tensor(hr, device))
    return float(value.item()), None
