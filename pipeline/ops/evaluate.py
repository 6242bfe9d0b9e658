"""Benchmark evaluation with the paper protocol.

HR cropped to a multiple of the scale; LR made from it with the
MATLAB-compatible bicubic (or read from --lr); PSNR and SSIM on the Y channel
with `scale` border pixels shaved. Gray images are treated as three equal
channels, as the reference scripts (which read every image as colour) do.

Any scale `run` takes works here, the same way: a fractional scale p/q crops the HR
to a multiple of p (so the LR, HR * q/p, is whole and upscales back to the HR's size
exactly) and shaves ceil(scale) pixels; a model trained at another scale reaches it as
in `run` (x3 from an x4 model: one x4 pass, then the antialiased bicubic down), which
the result says (`model_scale`).
"""

from __future__ import annotations

import math
import posixpath
import re
from fractions import Fraction

import numpy as np

from pipeline import formats, metrics, store
from pipeline.inference.engine import Upscaler
from pipeline.models import load_model
from pipeline.inference.resize import imresize


def _lr_index(lr_dir: str, storage_options: dict | None) -> dict[str, str]:
    """LR files by the stem of their HR image ('babyx4.png' -> 'baby')."""
    fs, root = store.open_location(lr_dir, storage_options)
    index = {}
    for path in fs.find(root):
        stem = posixpath.splitext(posixpath.basename(path))[0]
        index[re.sub(r"[_-]?x\d+$", "", stem, flags=re.IGNORECASE)] = fs.unstrip_protocol(path)
    return index


def protocol_crop(scale: float) -> int:
    """The HR side must be a multiple of this for its LR to have whole pixels: 4 at x4, 5 at x2.5."""
    return Fraction(scale).limit_denominator(64).numerator


def evaluate(
    hr: str,
    scale: float,
    model: str = "bicubic",
    *,
    lr: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    compile: bool = False,
    storage_options: dict | None = None,
) -> dict:
    loaded = load_model(model, scale=max(1, round(scale)), storage_options=storage_options)
    crop, shave = protocol_crop(scale), math.ceil(scale)
    upscaler = Upscaler(loaded, device=device, precision=precision, tile=tile, overlap=overlap, compile=compile)
    lr_files = _lr_index(lr, storage_options) if lr else {}
    images = []
    for source in store.list_sources(hr, storage_options=storage_options):
        hr_pixels = formats.to_rgb8(formats.decode_image(store.read_bytes(source.uri, storage_options),
                                                 name=source.uri).pixels)
        h, w = (hr_pixels.shape[0] // crop) * crop, (hr_pixels.shape[1] // crop) * crop
        hr_pixels = hr_pixels[:h, :w]
        stem = posixpath.splitext(posixpath.basename(source.key))[0]
        if lr:
            if stem not in lr_files:
                raise FileNotFoundError(f"no LR image for {source.key} under {lr}")
            lr_pixels = formats.to_rgb8(formats.decode_image(store.read_bytes(lr_files[stem], storage_options),
                                                     name=lr_files[stem]).pixels)
        else:
            lr_pixels = imresize(hr_pixels, 1 / scale)
        sr = formats.to_rgb8(upscaler.upscale([lr_pixels], scale)[0])
        images.append({
            "image": source.key,
            "psnr": metrics.psnr(sr, hr_pixels, y_channel=True, shave=shave),
            "ssim": metrics.ssim(sr, hr_pixels, y_channel=True, shave=shave),
        })
    if not images:
        raise FileNotFoundError(f"no images under {hr}")
    mean = {k: float(np.mean([i[k] for i in images])) for k in ("psnr", "ssim")}
    model_scale = None if loaded.arch in ("bicubic", "lanczos") else loaded.scale
    return {"model": loaded.name, "arch": loaded.arch, "scale": scale, "model_scale": model_scale,
            "model_sha256": loaded.sha256, "protocol": f"Y channel, shave={shave}, MATLAB bicubic LR",
            "mean": mean, "images": images}
