"""PNG reads (8-bit; png.py writes every PNG), JPEG, WebP, BMP, GIF, and the TIFFs only libtiff
decodes well, through Pillow.

Palette and bilevel input comes back as RGB(A) and gray (re-quantising an upscaled image
would destroy the detail), CMYK as RGB (Pillow's conversion; JPEG and TIFF output convert
back), transparency keys as alpha, and only the first frame (``info["frames"]`` counts them).
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import warnings
import zlib

import numpy as np
from PIL import Image

from pipeline.formats.base import (
    ORIENTATION, WARNINGS_LOCK, DecodedImage, Exif, ImageDecodeError, add_note, as_dpi, as_hwc, check_size,
    colour_space, exif_note, finish, icc_for, read_exif,
)
from pipeline.formats.sniff import PNG_MAGIC

PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}

_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def bomb_limit(max_pixels: int | None):
    """Keep Pillow's decompression-bomb guard on, agreeing with max_pixels.

    The guard is one module-wide setting that Image.open checks before we see the
    size, so it is set to our limit while a header is read (the lock keeps concurrent
    decodes apart). Its warning is muted: check_size reports the same case more
    clearly right after. With max_pixels=None Pillow's own setting stays in force.
    """
    if max_pixels is None:
        yield
        return
    with _PILLOW_LIMIT_LOCK, WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # damaged EXIF read for its dpi: read_exif says it
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def open_image(data: bytes, fmt: str, label: str, max_pixels: int | None) -> tuple[Image.Image, int, dict]:
    """The header, size-checked: (image, frame count, info with any notes)."""
    if fmt == "png":
        check_png_crcs(data, label)
    info: dict = {}
    im = _open(data, fmt, label, max_pixels)
    check_size(*im.size, label, max_pixels)
    try:
        frames = getattr(im, "n_frames", 1)
    except Exception as exc:  # a damaged later frame must not cost the first one
        add_note(info, f"frames after the first not counted ({type(exc).__name__}: {exc})")
        frames = 1
        im = _open(data, fmt, label, max_pixels)
    return im, frames if isinstance(frames, int) and frames > 0 else 1, info


def _open(data: bytes, fmt: str, label: str, max_pixels: int | None) -> Image.Image:
    """Image.open under bomb_limit. Pillow refuses outright at twice its limit, in
    its own words and with that doubled figure; the header is then read again with
    the guard off (only the header: nothing is decoded) so that check_size reports
    it as every other oversized image, W x H against --max-pixels alone."""
    try:
        with bomb_limit(max_pixels):
            return Image.open(io.BytesIO(data), formats=[PILLOW_FORMATS[fmt]])
    except Image.DecompressionBombError:
        if max_pixels is None:
            raise
        with _PILLOW_LIMIT_LOCK, WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                size = Image.open(io.BytesIO(data), formats=[PILLOW_FORMATS[fmt]]).size
            except Exception:
                size = None
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        if size is not None:
            check_size(*size, label, max_pixels)
        raise


def exif_of(im: Image.Image, fmt: str) -> Exif:
    """The EXIF block when there is one (TIFF: none, its tags are its own IFD); else only the
    Orientation Pillow finds elsewhere (a TIFF's IFD, XMP)."""
    raw = None if fmt == "tiff" else im.info.get("exif")
    if raw:
        return read_exif(raw)
    try:
        with WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = im.getexif().get(ORIENTATION, 1)
    except Exception:
        orientation = 1
    return Exif(None, orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1)


def decode(data: bytes, fmt: str, label: str, max_pixels: int | None) -> DecodedImage:
    """First frame, H x W x C uint8, turned upright (Pillow itself turns a TIFF as it loads it)."""
    im, frames, info = open_image(data, fmt, label, max_pixels)
    im.load()  # everything, now: a truncated file must fail here, not later
    pixels = pillow_pixels(im, label)
    exif = exif_of(im, fmt)
    exif_note(exif, info)
    return finish(pixels, fmt, im.mode, icc=im.info.get("icc_profile"), exif=exif.raw,
                  orientation=exif.orientation, dpi=as_dpi(im.info.get("dpi")), frames=frames, info=info)


def check_png_crcs(data: bytes, label: str) -> None:
    """Pillow skips the CRC of image data chunks; a mismatch means damaged pixels."""
    pos = len(PNG_MAGIC)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        body = data[pos + 4 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(crc) < 4:
            return  # truncated: the decoder reports it
        if zlib.crc32(body) != int.from_bytes(crc, "big"):
            raise ImageDecodeError(f"{label}: corrupt PNG file (CRC mismatch in {body[:4]!r} chunk)")
        if body[:4] == b"IEND":
            return
        pos += 12 + length


def pillow_pixels(im: Image.Image, label: str) -> np.ndarray:
    """H x W x C array; palettes and CMYK become RGB(A), transparency keys become alpha."""
    alpha = im.has_transparency_data
    if im.mode in ("1", "L", "LA"):
        target = "LA" if alpha else "L"
    elif im.mode == "CMYK":
        target = "RGB"
    elif im.mode in ("P", "PA", "RGB", "RGBA", "YCbCr"):
        target = "RGBA" if alpha else "RGB"
    else:
        raise ImageDecodeError(f"{label}: unsupported: pixel mode {im.mode!r} in {im.format} file")
    return as_hwc(np.asarray(im if im.mode == target else im.convert(target)))


def encode(pixels, like, fmt, dpi, cmyk, quality) -> bytes:
    # Pillow writes WebP gray as RGB and gray+alpha as RGBA (WebP has no gray)
    im = Image.fromarray(np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels))
    if cmyk:
        im = im.convert("CMYK")
    options = {}
    if fmt != "bmp":
        if icc := icc_for(like, b"RGB " if fmt == "webp" else colour_space(pixels.shape[2], cmyk)):
            options["icc_profile"] = icc
        if like.exif:
            options["exif"] = like.exif
    if dpi and fmt != "webp":
        options["dpi"] = dpi
    if fmt == "jpeg":
        options["quality"] = quality
    elif fmt == "webp":
        if quality >= 100:  # exact: keep the colour under fully transparent pixels too
            options.update(lossless=True, exact=True)
        else:
            options["quality"] = quality
    out = io.BytesIO()
    im.save(out, format=PILLOW_FORMATS[fmt], **options)
    return out.getvalue()
