"""Sample images for the demo, made offline from scikit-image's bundled
photographs (no download): one file per layout the engine claims to keep."""

from __future__ import annotations

import io
import posixpath

import numpy as np
import tifffile
from PIL import Image

from pipeline import store


def _photo(name: str, size: int) -> np.ndarray:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    image = Image.fromarray(pixels)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image)


def _encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_files(size: int = 160) -> dict[str, bytes]:
    """Relative key -> file bytes."""
    astronaut = _photo("astronaut", size)
    yy, xx = np.mgrid[: astronaut.shape[0], : astronaut.shape[1]]
    radius = np.hypot(yy - astronaut.shape[0] / 2, xx - astronaut.shape[1] / 2)
    alpha = np.clip((astronaut.shape[0] * 0.45 - radius) * 16, 0, 255).astype(np.uint8)
    rocket16 = (_photo("rocket", size).astype(np.uint16) * 257)
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, rocket16, photometric="rgb", compression="zlib")
    return {
        "photos/astronaut.png": _encode(astronaut, "PNG"),
        "photos/coffee.jpg": _encode(_photo("coffee", size), "JPEG", quality=92),
        "photos/chelsea.webp": _encode(_photo("chelsea", size), "WEBP", lossless=True),
        "gray/camera.png": _encode(_photo("camera", size), "PNG"),
        "alpha/astronaut-cutout.png": _encode(np.dstack([astronaut, alpha]), "PNG"),
        "16bit/rocket.tif": tiff.getvalue(),
    }


def write_samples(url: str, size: int = 160, storage_options: dict | None = None) -> list[str]:
    """Write the samples; a file already there with the same bytes is left alone, so a
    second `upscaler demo` finds the same sources (same versions) and resumes."""
    fs, root = store.open_location(url, storage_options)
    written = []
    for key, data in sample_files(size).items():
        path = posixpath.join(root, key)
        if not (fs.exists(path) and fs.cat_file(path) == data):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
            fs.pipe_file(path, data)
        written.append(store.full_uri(fs, path))
    return written
