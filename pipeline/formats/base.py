"""What every format module shares: the result types, the errors, size limits, orientation, EXIF.

Kept apart from the format modules so each of them (pillow, png, tiff, dicom) imports
only this, never the package, and the package can re-export them all without cycles.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipeline.raster import RasterInfo

from pipeline.errors import one_line_text

# 400 Mpx (20000 x 20000) fits the largest camera captures (pixel-shift medium format)
# and large archive scans, while such an image is already 1.2 GB as RGB uint8 (3.2 GB
# as RGBA uint16) before it is upscaled. Larger images are refused from the header,
# before decoding; --max-pixels raises the limit.
DEFAULT_MAX_PIXELS = 20_000 * 20_000

ORIENTATION = 0x0112  # EXIF / TIFF tag
EXIF_PREFIX = b"Exif\x00\x00"
PHOTO_DTYPES = ("uint8", "uint16", "float32")
TIFF_DTYPES = ("uint8", "uint16", "int16", "float32")  # int16 only as a raster
TYPE_SUFFIX = {"uint8": "", "uint16": ";16", "int16": ";16S", "float32": ";32F"}
# warnings.catch_warnings swaps process-wide state: one lock for every use of it here
WARNINGS_LOCK = threading.RLock()


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode faithfully; the message names the file."""


class ImageTooLargeError(ImageDecodeError):
    """The header declares more pixels than allowed; raised before any pixel is decoded."""


class ImageEncodeError(ValueError):
    """The pixels cannot be written to the requested format without losing something."""


class _Layout:
    """has_alpha / color_channels from shape and raster alone, shared by both result types."""

    shape: tuple
    raster: RasterInfo | None

    @property
    def has_alpha(self) -> bool:
        if self.raster is not None:
            return self.raster.alpha is not None
        return self.shape[2] in (2, 4)

    @property
    def color_channels(self) -> int:
        """Colour channels of a photo (1 or 3); for a raster, its data bands."""
        if self.raster is not None:
            return self.shape[2] - (self.raster.alpha is not None)
        return 1 if self.shape[2] <= 2 else 3


@dataclass
class DecodedImage(_Layout):
    """Pixels plus what the output needs to look like the source."""

    pixels: np.ndarray  # H x W x C (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA); uint8, uint16 or float32
    format: str  # "png" | "jpeg" | "webp" | "bmp" | "gif" | "tiff" | "dicom"
    mode: str  # what the source was: Pillow mode, or e.g. "RGB;16", "L;32F" for 16-bit/float
    icc_profile: bytes | None = None
    exif: bytes | None = None  # starts with b"Exif\0\0"; Orientation reset to 1
    # "dpi", "frames", "extrasample" (TIFF), "dicom" (dataset), "notes" (list of what was
    # dropped or changed on the way, for the row's note)
    info: dict = field(default_factory=dict)
    raster: RasterInfo | None = None  # rasters: any band count, int16 too; see raster.py

    @property
    def shape(self) -> tuple:
        return self.pixels.shape

    @property
    def dtype(self) -> np.dtype:
        return self.pixels.dtype


@dataclass
class ImageHeader(_Layout):
    """What a header-only read knows (streaming): everything a DecodedImage has but its pixels.

    It has no ``pixels``: code that needs pixels cannot be handed a header by mistake.
    """

    shape: tuple  # (H, W, C) as the pixels would decode
    dtype: np.dtype  # native byte order, as decoded
    format: str
    mode: str
    info: dict = field(default_factory=dict)
    icc_profile: bytes | None = None
    raster: RasterInfo | None = None
    exif: bytes | None = None  # never read from a header; kept so encoders see the same fields


def optional_module(module: str, extra: str, what: str, label: str):
    """`module` imported, or the ImageDecodeError naming the extra that installs it: a file of
    an optional format is one failed row saying what to install, never an ImportError."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImageDecodeError(f"{label}: reading {what} needs the optional extra: pip install 'pipeline[{extra}]'") \
            from error


def check_size(width: int, height: int, label: str, max_pixels: int | None) -> None:
    if not isinstance(width, (int, np.integer)) or not isinstance(height, (int, np.integer)):
        raise ImageDecodeError(f"{label}: corrupt header (size {width!r} x {height!r})")
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{label}: image declares {width} x {height} pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width} x {height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,}; raise it with --max-pixels if the image is expected"
        )


def add_note(info: dict, text: str) -> None:
    info.setdefault("notes", []).append(text)


def finish(pixels, fmt, mode, *, icc, exif, orientation, dpi, frames, info=None, raster=None) -> DecodedImage:
    """Turn the pixels upright and gather the metadata worth carrying."""
    info = dict(info or {})
    transform = ORIENT.get(orientation) if isinstance(orientation, int) else None
    if transform is not None:
        pixels = transform(pixels)
        if dpi and orientation >= 5:  # rows and columns swapped
            dpi = (dpi[1], dpi[0])
    if dpi:
        info["dpi"] = dpi
    if frames > 1:
        info["frames"] = frames
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),  # flips leave negative strides
        format=fmt,
        mode=mode,
        icc_profile=icc or None,
        exif=exif,
        info=info,
        raster=raster,
    )


# Same result as PIL.ImageOps.exif_transpose, for any dtype and channel count.
ORIENT = {
    2: lambda p: p[:, ::-1],
    3: lambda p: p[::-1, ::-1],
    4: lambda p: p[::-1],
    5: lambda p: p.swapaxes(0, 1),
    6: lambda p: np.rot90(p, -1),
    7: lambda p: p[::-1, ::-1].swapaxes(0, 1),
    8: lambda p: np.rot90(p),
}


class Exif(NamedTuple):
    """EXIF as it will be carried: the bytes (Orientation 1) or None, the orientation to
    apply, and why it was dropped when it was."""

    raw: bytes | None
    orientation: int
    dropped: str | None = None


def read_exif(raw: bytes | None) -> Exif:
    """Parse EXIF once; damaged EXIF (Pillow raises or warns) is dropped, not fatal.

    A readable Orientation (1-8) is still applied from damaged EXIF: viewers read it too.
    Undamaged EXIF is kept byte for byte when its Orientation is already 1.
    """
    if not raw:
        return Exif(None, 1)
    if not raw.startswith(EXIF_PREFIX):
        raw = EXIF_PREFIX + raw
    if len(raw) == len(EXIF_PREFIX):
        return Exif(None, 1)  # an empty block: nothing to carry
    exif = Image.Exif()
    problem = None
    try:
        with WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exif.load(raw)
            orientation = exif.get(ORIENTATION, 1)
        complaints = [str(w.message).strip() for w in caught if issubclass(w.category, UserWarning)]
        if complaints:
            problem = complaints[0]
    except Exception as exc:  # Pillow raises SyntaxError, struct.error, ValueError, ... on bad EXIF
        problem, orientation = f"{type(exc).__name__}: {exc}", 1
    if not isinstance(orientation, int) or orientation not in range(1, 9):
        orientation = 1
    if problem is not None:
        return Exif(None, orientation, one_line_text(problem))
    if orientation == 1 and exif.get(ORIENTATION, 1) == 1:
        return Exif(raw, 1)
    try:
        exif[ORIENTATION] = 1
        return Exif(exif.tobytes(), orientation)
    except Exception as exc:
        return Exif(None, orientation, one_line_text(f"cannot rewrite it ({type(exc).__name__}: {exc})"))


def exif_note(exif: Exif, info: dict) -> None:
    if exif.dropped is not None:
        applied = f"; its Orientation {exif.orientation} was applied" if exif.orientation != 1 else ""
        add_note(info, f"EXIF dropped: {exif.dropped}{applied}")


def as_dpi(value) -> tuple[float, float] | None:
    try:
        if not value or len(value) != 2 or min(value) <= 0:
            return None
        dpi = float(value[0]), float(value[1])
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return dpi if all(np.isfinite(dpi)) else None


def as_hwc(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., None] if pixels.ndim == 2 else pixels


def mode_name(pixels: np.ndarray) -> str:
    base = ("L", "LA", "RGB", "RGBA")[pixels.shape[2] - 1]
    return base + TYPE_SUFFIX[pixels.dtype.name]


def icc_for(like, space: bytes) -> bytes | None:
    """The source profile, if it describes the colour space being written (b'RGB ', b'GRAY', b'CMYK')."""
    icc = like.icc_profile
    return icc if icc and icc[16:20] == space else None


def colour_space(channels: int, cmyk: bool) -> bytes:
    return b"CMYK" if cmyk else b"GRAY" if channels <= 2 else b"RGB "


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any decoded photo -> H x W x 3 uint8 (alpha dropped, gray repeated): what evaluation
    and training compare, as the published benchmark figures do."""
    if pixels.shape[2] in (2, 4):
        pixels = pixels[..., :-1]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    if pixels.dtype == np.uint16:
        pixels = np.round(pixels / 257.0).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        pixels = np.round(np.clip(pixels, 0, 1) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(pixels)
