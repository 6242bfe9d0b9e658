"""Benchmark evaluation with the paper protocol.

HR cropped to a multiple of the scale; LR made from it with the
MATLAB-compatible bicubic (or read from --lr); PSNR and SSIM on the Y channel
with `scale` border pixels shaved. Gray images are treated as three equal
channels, as the reference scripts (which read every image as colour) do.
"""

from __future__ import annotations

import posixpath
import re

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


def evaluate(
    hr: str,
    scale: int,
    model: str = "bicubic",
    *,
    lr: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    storage_options: dict | None = None,
) -> dict:
    loaded = load_model(model, scale=scale, storage_options=storage_options)
    if loaded.arch not in ("bicubic", "lanczos") and loaded.scale != scale:
        raise ValueError(f"model {model!r} is x{loaded.scale}; evaluate it at --scale {loaded.scale}")
    upscaler = Upscaler(loaded, device=device, precision=precision, tile=tile, overlap=overlap)
    lr_files = _lr_index(lr, storage_options) if lr else {}
    images = []
    for source in store.list_sources(hr, storage_options=storage_options):
        hr_pixels = formats.to_rgb8(formats.decode_image(store.read_bytes(source.uri, storage_options),
                                                 name=source.uri).pixels)
        h, w = (hr_pixels.shape[0] // scale) * scale, (hr_pixels.shape[1] // scale) * scale
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
            "psnr": metrics.psnr(sr, hr_pixels, y_channel=True, shave=scale),
            "ssim": metrics.ssim(sr, hr_pixels, y_channel=True, shave=scale),
        })
    if not images:
        raise FileNotFoundError(f"no images under {hr}")
    mean = {k: float(np.mean([i[k] for i in images])) for k in ("psnr", "ssim")}
    return {"model": loaded.name, "arch": loaded.arch, "scale": scale, "model_sha256": loaded.sha256,
            "protocol": "Y channel, shave=scale, MATLAB bicubic LR", "mean": mean, "images": images}
