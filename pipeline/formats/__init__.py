"""Decode and encode images without losing what an archive cannot re-create.

Users upscale originals they may not have a second copy of, so the output keeps the
input's bit depth (uint8, uint16, float32) and channel layout, and carries the ICC
profile, EXIF and dpi to every output format that can hold them. What cannot be kept
raises an error instead of being dropped, except these deliberate choices:

- Palette ("P", "PA") input comes back as RGB/RGBA and bilevel ("1") as L: re-quantising
  an upscaled image to a palette or to two levels would destroy the upscaled detail.
  For the same reason GIF input is written as PNG unless another format is requested.
- CMYK input is handed to the model as RGB (Pillow's conversion); JPEG and TIFF output
  converts it back to CMYK, other formats stay RGB.
- Only the first frame/page is decoded; ``info["frames"]`` says how many there were.
- WebP has no gray: gray is written as RGB and gray+alpha as RGBA. WebP keeps no dpi.
- TIFF output keeps ICC and dpi but not EXIF (tifffile cannot write an EXIF IFD);
  BMP output keeps dpi only.
- An ICC profile is written only where its colour space matches the written pixels
  (a CMYK profile would mislabel RGB output).
- EXIF orientation is applied to the pixels and reset to 1 in the carried EXIF;
  XMP is not carried.

Rasters (see raster.py): a TIFF with GeoTIFF or GDAL tags, int16 samples, or a sample
layout that is not L/LA/RGB/RGBA (e.g. 4 or 13 bands) decodes with ``raster`` set: all
its bands in their order and type (uint8, uint16, int16, float32), its georeferencing,
nodata and GDAL metadata, and is written back only as TIFF, with the georeferencing
rescaled (geo.py). A georeferenced raster keeps its stored pixel grid (the Orientation
tag is not applied: the geotransform refers to the stored grid). DICOM (dicom.py, the
optional ``dicom`` extra) decodes its stored values and is written back as a derived
DICOM instance.
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass, field

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from pipeline.formats import geotiff as geo_mod
from pipeline.raster import RasterInfo

# 400 Mpx (20000 x 20000) fits the largest camera captures (pixel-shift medium format)
# and large archive scans, while such an image is already 1.2 GB as RGB uint8 (3.2 GB
# as RGBA uint16) before it is upscaled. Larger images are refused from the header,
# before decoding; --max-pixels raises the limit.
DEFAULT_MAX_PIXELS = 20_000 * 20_000

ORIENTATION = 0x0112  # EXIF / TIFF tag
_EXIF_PREFIX = b"Exif\x00\x00"
_DTYPES = ("uint8", "uint16", "float32")  # photos
_TIFF_DTYPES = ("uint8", "uint16", "int16", "float32")  # int16 only as a raster
_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
_EXTENSIONS = {"png": ".png", "tiff": ".tif", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "dicom": ".dcm"}
_ALIASES = {"jpg": "jpeg", "tif": "tiff", "dcm": "dicom"}
_REQUESTABLE = ("png", "tiff", "jpeg", "webp")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode faithfully; the message names the file."""


class ImageTooLargeError(ImageDecodeError):
    """The header declares more pixels than allowed; raised before any pixel is decoded."""


class ImageEncodeError(ValueError):
    """The pixels cannot be written to the requested format without losing something."""


@dataclass
class DecodedImage:
    """Pixels plus what the output needs to look like the source."""

    pixels: np.ndarray  # H x W x C (C: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA); uint8, uint16 or float32
    format: str  # "png" | "jpeg" | "webp" | "bmp" | "gif" | "tiff" | "dicom"
    mode: str  # what the source was: Pillow mode, or e.g. "RGB;16", "L;32F" for 16-bit/float
    icc_profile: bytes | None = None
    exif: bytes | None = None  # starts with b"Exif\0\0"; Orientation reset to 1
    info: dict = field(default_factory=dict)  # "dpi", "frames", "extrasample" (TIFF), "dicom" (dataset)
    raster: RasterInfo | None = None  # rasters: any band count, int16 too; see raster.py

    @property
    def has_alpha(self) -> bool:
        if self.raster is not None:
            return self.raster.alpha is not None
        return self.pixels.shape[2] in (2, 4)

    @property
    def color_channels(self) -> int:
        """Colour channels of a photo (1 or 3); for a raster, its data bands."""
        if self.raster is not None:
            return self.pixels.shape[2] - (self.raster.alpha is not None)
        return 1 if self.pixels.shape[2] <= 2 else 3


def output_format(src_format: str, requested: str | None) -> tuple[str, str]:
    """(format, extension) to write; GIF becomes PNG since a palette would ruin the upscale.
    DICOM is written as DICOM (a derived instance): another format would drop the
    spacing and the instance's identity, so asking for one is an error."""
    if src_format == "dicom":
        if requested and _canonical(requested) != "dicom":
            raise ValueError(f"DICOM input is written as a derived DICOM instance; --format {requested} "
                             "would drop its pixel spacing and UIDs")
        return "dicom", _EXTENSIONS["dicom"]
    if requested:
        fmt = _canonical(requested)
        if fmt not in _REQUESTABLE:
            choices = ", ".join(_REQUESTABLE)
            raise ValueError(f"unsupported output format {requested!r}; choose one of {choices}")
    else:
        fmt = "png" if src_format == "gif" else _canonical(src_format)
        if fmt not in _EXTENSIONS:
            raise ValueError(f"unknown source format {src_format!r}")
    return fmt, _EXTENSIONS[fmt]


def _canonical(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    return _ALIASES.get(fmt, fmt)


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes, *, name: str = "", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Decode the first frame to H x W x C at the source's bit depth, upright.

    Every failure is an ImageDecodeError naming the file; the library's own
    exception is kept as __cause__.
    """
    label = name or "image"
    if not data:
        raise ImageDecodeError(f"{label}: empty file")
    fmt = _sniff(data)
    if fmt is None:
        raise ImageDecodeError(f"{label}: {_not_an_image(data)}")
    try:
        if fmt == "tiff":
            return _decode_tiff(data, label, max_pixels)
        if fmt == "dicom":
            from pipeline.formats import dicom

            return dicom.decode(data, label, max_pixels)
        return _decode_pillow(data, fmt, label, max_pixels)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        if max_pixels is None:
            limit = "Pillow's Image.MAX_IMAGE_PIXELS, which applies when max_pixels is None"
        else:
            limit = f"{max_pixels:,} pixels; raise it with --max-pixels if the image is expected"
        raise ImageTooLargeError(f"{label}: image is over the limit of {limit} (Pillow: {exc})") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"{label}: {_describe_failure(fmt, exc)}") from exc


def _sniff(data: bytes) -> str | None:
    """Format from the magic bytes, so only the formats we claim reach a decoder."""
    if data[128:132] == b"DICM":  # DICOM Part 10 (first: its preamble may hold a TIFF header)
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(TIFF_MAGIC):
        return "tiff"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def _not_an_image(data: bytes) -> str:
    """Say what the bytes look like: error pages saved under an image name are common."""
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "not an image (looks like HTML)"
    if head.startswith((b"<?xml", b"<svg")):
        return "not a supported image (looks like XML/SVG)"
    try:
        data[:1024].decode("utf-8")
        return "not an image (looks like text)"
    except UnicodeDecodeError:
        return f"not a supported image (unrecognised header {data[:8].hex(' ')})"


def _describe_failure(fmt: str, exc: Exception) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return f"corrupt {fmt.upper()} file (header not understood)"
    text = str(exc)
    truncated = isinstance(exc, EOFError) or any(
        hint in text.lower() for hint in ("truncated", "too small", "failed to read")
    )
    return f"{'truncated' if truncated else 'corrupt'} {fmt.upper()} file ({type(exc).__name__}: {text})"


def _check_size(width: int, height: int, label: str, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width} x {height} = {width * height:,} pixels is over the limit of "
            f"{max_pixels:,}; raise it with --max-pixels if the image is expected"
        )


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_bomb_limit(max_pixels: int | None):
    """Keep Pillow's decompression-bomb guard on, agreeing with max_pixels.

    The guard is one module-wide setting that Image.open checks before we see the
    size, so it is set to our limit while a header is read (the lock keeps concurrent
    decodes apart). Its warning is muted: _check_size reports the same case more
    clearly right after. With max_pixels=None Pillow's own setting stays in force.
    """
    if max_pixels is None:
        yield
        return
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode_pillow(data: bytes, fmt: str, label: str, max_pixels: int | None) -> DecodedImage:
    if fmt == "png":
        _check_png_crcs(data, label)
    with _pillow_bomb_limit(max_pixels):
        im = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
        frames = getattr(im, "n_frames", 1)
    _check_size(*im.size, label, max_pixels)

    if fmt == "png" and data[24] == 16:  # IHDR bit depth
        # Pillow reduces 16-bit RGB/RGBA/LA PNGs to 8 bit; libpng keeps all 16 (and turns tRNS into alpha).
        pixels = _as_hwc(imagecodecs.png_decode(data))
        mode = _mode_name(pixels)
        exif = _load_exif(im.info.get("exif"))  # PNG getexif() would decode the pixels again
    else:
        im.load()  # everything, now: a truncated file must fail here, not later
        pixels, mode = _pillow_pixels(im, label), im.mode
        exif = im.getexif()

    raw_exif = None if fmt == "tiff" else im.info.get("exif")  # TIFF "EXIF" would be its own IFD
    return _finish(
        pixels, fmt, mode, icc=im.info.get("icc_profile"), raw_exif=raw_exif,
        orientation=exif.get(ORIENTATION, 1), dpi=_dpi(im.info.get("dpi")), frames=frames,
    )


def _check_png_crcs(data: bytes, label: str) -> None:
    """Pillow skips the CRC of image data chunks; a mismatch means damaged pixels."""
    pos = 8
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


def _pillow_pixels(im: Image.Image, label: str) -> np.ndarray:
    """H x W x C array; palettes and CMYK become RGB(A), transparency keys become alpha."""
    alpha = im.has_transparency_data
    if im.mode in ("1", "L", "LA"):
        target = "LA" if alpha else "L"
    elif im.mode == "CMYK":
        target = "RGB"
    elif im.mode in ("P", "PA", "RGB", "RGBA", "YCbCr"):
        target = "RGBA" if alpha else "RGB"
    else:
        raise ImageDecodeError(f"{label}: unsupported pixel mode {im.mode!r} in {im.format} file")
    return _as_hwc(np.asarray(im if im.mode == target else im.convert(target)))


def _decode_tiff(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        _check_size(page.imagewidth, page.imagelength, label, max_pixels)
        layout = tiff_layout(page, label)
        if layout is None:  # palette, bilevel, CMYK, YCbCr: libtiff via Pillow
            return _decode_pillow(data, "tiff", label, max_pixels)
        pixels = page.asarray()
        if page.axes == "SYX":  # planar configuration "separate"
            pixels = np.moveaxis(pixels, 0, -1)
        elif page.axes not in ("YX", "YXS"):
            raise ImageDecodeError(f"{label}: unsupported TIFF layout {page.axes!r}")
        pixels = _as_hwc(pixels)
        raster, info = layout
        georeferenced = raster is not None and raster.geo is not None and raster.geo.georeferenced
        return _finish(
            pixels, "tiff", tiff_mode(pixels, raster), icc=page.tags.valueof(34675), raw_exif=None,
            orientation=1 if georeferenced else page.tags.valueof(ORIENTATION, 1), dpi=_tiff_dpi(page),
            frames=len(tif.pages), info=info, raster=raster,
        )


def tiff_layout(page: tifffile.TiffPage, label: str = "image") -> tuple[RasterInfo | None, dict] | None:
    """How a TIFF page decodes, from its tags alone (also used to stream it window by
    window): None for what Pillow decodes (palette, bilevel, CMYK, YCbCr), else
    (raster info or None for a photo, info for the DecodedImage). Raises
    ImageDecodeError for what cannot be decoded faithfully."""
    photometric = page.photometric
    plain = photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)
    if not plain or page.bitspersample < 8:
        if page.bitspersample <= 8:
            return None
        raise ImageDecodeError(
            f"{label}: unsupported TIFF photometric {photometric.name} at {page.bitspersample} bits"
        )
    if page.dtype is None or page.dtype.name not in _TIFF_DTYPES:
        raise ImageDecodeError(
            f"{label}: unsupported sample type {page.dtype} in TIFF (supported: {', '.join(_TIFF_DTYPES)})"
        )
    samples = page.samplesperpixel
    color = 3 if photometric == tifffile.PHOTOMETRIC.RGB else 1
    if samples < color:
        raise ImageDecodeError(f"{label}: RGB TIFF with {samples} samples per pixel")
    geo = geo_mod.read_geo(page)
    extras = tuple(int(e) for e in page.extrasamples) if page.extrasamples else ()
    if geo is None and page.dtype.name in _DTYPES and samples - color in (0, 1):  # a photo
        info = {}
        if samples > color:  # keep associated / unassociated / unspecified for TIFF output
            info["extrasample"] = extras[0] if extras else 0
        return None, info
    names = geo.colorinterp() if geo is not None else {}
    alpha = None
    for i, kind in enumerate(extras):
        if kind in (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA) and color + i < samples:
            alpha = color + i
            break
    if alpha is None:
        alpha = next((b for b, name in sorted(names.items()) if name.lower() == "alpha" and b < samples), None)
    if not names and color == 3:
        names = {0: "Red", 1: "Green", 2: "Blue"}
    raster = RasterInfo(
        kind="geotiff" if geo is not None and geo.georeferenced else "tiff",
        bands=samples, nodata=geo.nodata if geo is not None else None, alpha=alpha, names=names, geo=geo,
        photometric="rgb" if color == 3 else "minisblack", extrasamples=extras,
    )
    return raster, {}


def tiff_mode(pixels: np.ndarray, raster: RasterInfo | None) -> str:
    """Mode name: "RGB;16" for photos; rasters "L;16S" (one band), "RGB" (RGB
    photometric), else "<bands>B" with the type suffix, e.g. "4B;16"."""
    if raster is None:
        return _mode_name(pixels)
    bands = pixels.shape[2]
    base = "L" if bands == 1 else "RGB" if raster.photometric == "rgb" and bands == 3 else f"{bands}B"
    return base + _TYPE_SUFFIX[pixels.dtype.name]


def _tiff_dpi(page: tifffile.TiffPage) -> tuple[float, float] | None:
    per_inch = {2: 1.0, 3: 2.54}.get(page.tags.valueof(296, 2))  # ResolutionUnit: inch, cm
    x, y = page.tags.valueof(282), page.tags.valueof(283)
    if per_inch is None or not x or not y or not x[1] or not y[1]:
        return None
    return _dpi((x[0] / x[1] * per_inch, y[0] / y[1] * per_inch))


def _finish(pixels, fmt, mode, *, icc, raw_exif, orientation, dpi, frames, info=None, raster=None) -> DecodedImage:
    """Turn the pixels upright and gather the metadata worth carrying."""
    info = dict(info or {})
    transform = _ORIENT.get(orientation)
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
        exif=_upright_exif(raw_exif),
        info=info,
        raster=raster,
    )


# Same result as PIL.ImageOps.exif_transpose, for any dtype and channel count.
_ORIENT = {
    2: lambda p: p[:, ::-1],
    3: lambda p: p[::-1, ::-1],
    4: lambda p: p[::-1],
    5: lambda p: p.swapaxes(0, 1),
    6: lambda p: np.rot90(p, -1),
    7: lambda p: p[::-1, ::-1].swapaxes(0, 1),
    8: lambda p: np.rot90(p),
}


def _load_exif(raw: bytes | None) -> Image.Exif:
    exif = Image.Exif()
    if raw:
        exif.load(raw)
    return exif


def _upright_exif(raw: bytes | None) -> bytes | None:
    """EXIF with Orientation 1, untouched byte for byte when it already was."""
    if not raw:
        return None
    if not raw.startswith(_EXIF_PREFIX):
        raw = _EXIF_PREFIX + raw
    exif = _load_exif(raw)
    if exif.get(ORIENTATION, 1) == 1:
        return raw
    exif[ORIENTATION] = 1
    return exif.tobytes()


def _dpi(value) -> tuple[float, float] | None:
    if not value or len(value) != 2 or min(value) <= 0:
        return None
    return float(value[0]), float(value[1])


def _as_hwc(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., None] if pixels.ndim == 2 else pixels


_TYPE_SUFFIX = {"uint8": "", "uint16": ";16", "int16": ";16S", "float32": ";32F"}


def _mode_name(pixels: np.ndarray) -> str:
    base = ("L", "LA", "RGB", "RGBA")[pixels.shape[2] - 1]
    return base + _TYPE_SUFFIX[pixels.dtype.name]


# --------------------------------------------------------------------------- encoding


def encode_image(
    pixels: np.ndarray,
    like: DecodedImage,
    fmt: str | None = None,
    *,
    quality: int = 95,
    dpi_scale: float = 1.0,
    compress_level: int = 1,
    derivation: dict | None = None,
) -> bytes:
    """Encode the upscaled pixels like the source: same dtype and channels, same metadata.

    fmt None means output_format(like.format, None). quality applies to JPEG and WebP
    (WebP is lossless at quality >= 100). dpi is multiplied by dpi_scale, since an
    upscaled image covers the same physical size with more pixels. compress_level is
    zlib's (0-9) for PNG and TIFF: 1 by default, as OpenCV does, because level 6 costs
    about four times the CPU for files some 10% smaller, and on a GPU machine the
    encoder, not the model, is what limits throughput.

    Rasters are written as TIFF with their georeferencing rescaled to the output's
    size (geo.py); DICOM as a derived instance, ``derivation`` giving
    dicom.encode's keywords (description, uid_seed).
    """
    fmt = _canonical(fmt) if fmt else output_format(like.format, None)[0]
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != like.pixels.shape[2] or pixels.dtype != like.pixels.dtype:
        raise ImageEncodeError(
            f"pixels are {pixels.shape} {pixels.dtype} but the source was "
            f"H x W x {like.pixels.shape[2]} {like.pixels.dtype}; the output must keep both"
        )
    if like.format == "dicom" or fmt == "dicom":
        if like.format != "dicom" or fmt != "dicom":
            raise ImageEncodeError("DICOM is written only from DICOM input, and DICOM input only as DICOM")
        from pipeline.formats import dicom

        try:
            return dicom.encode(pixels, like, **(derivation or {}))
        except ImageEncodeError:
            raise
        except Exception as exc:
            raise ImageEncodeError(f"cannot write DICOM: {type(exc).__name__}: {exc}") from exc
    if like.raster is not None and fmt != "tiff":
        what = "georeferencing, nodata and GDAL metadata" if like.raster.geo is not None else \
            f"{pixels.shape[2]} {pixels.dtype} bands"
        raise ImageEncodeError(f"only TIFF keeps this raster's {what}; use --format tiff")
    _check_encodable(fmt, pixels)
    dpi = like.info.get("dpi")
    dpi = (dpi[0] * dpi_scale, dpi[1] * dpi_scale) if dpi else None
    cmyk = like.mode == "CMYK" and pixels.shape[2] == 3
    try:
        if fmt == "tiff" and like.raster is not None:
            return _encode_raster_tiff(pixels, like, dpi, compress_level)
        if fmt == "tiff":
            return _encode_tiff(pixels, like, dpi, cmyk, compress_level)
        if fmt == "png" and pixels.dtype == np.uint16:
            return _encode_png16(pixels, like, dpi, compress_level)
        return _encode_pillow(pixels, like, fmt, dpi, cmyk and fmt == "jpeg", quality, compress_level)
    except ImageEncodeError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageEncodeError(f"cannot write {fmt.upper()}: {type(exc).__name__}: {exc}") from exc


def _check_encodable(fmt: str, pixels: np.ndarray) -> None:
    """Refuse, with the way out, what the format would silently degrade."""
    dtype, channels = pixels.dtype.name, pixels.shape[2]
    if fmt not in _EXTENSIONS:
        raise ImageEncodeError(f"unsupported output format {fmt!r}")
    if fmt == "tiff":
        if dtype not in _TIFF_DTYPES:
            raise ImageEncodeError(f"TIFF output supports {', '.join(_TIFF_DTYPES)}, not {dtype}")
        return
    allowed = ("uint8", "uint16") if fmt == "png" else ("uint8",)
    if dtype not in allowed:
        way_out = "--format tiff" if dtype == "float32" else "--format png or --format tiff"
        raise ImageEncodeError(
            f"{fmt.upper()} cannot store {dtype} pixels without losing precision; use {way_out}"
        )
    if fmt == "jpeg" and channels in (2, 4):
        raise ImageEncodeError(
            "JPEG has no alpha channel; use --format png, webp or tiff to keep transparency"
        )
    if fmt == "bmp" and channels in (2, 4):
        raise ImageEncodeError(
            "BMP alpha is ignored by Pillow and most readers; use --format png to keep transparency"
        )


def _icc_for(like: DecodedImage, space: bytes) -> bytes | None:
    """The source profile, if it describes the colour space being written (b'RGB ', b'GRAY', b'CMYK')."""
    icc = like.icc_profile
    return icc if icc and icc[16:20] == space else None


def _space(channels: int, cmyk: bool) -> bytes:
    return b"CMYK" if cmyk else b"GRAY" if channels <= 2 else b"RGB "


def _encode_pillow(pixels, like, fmt, dpi, cmyk, quality, compress_level) -> bytes:
    # Pillow writes WebP gray as RGB and gray+alpha as RGBA (WebP has no gray)
    im = Image.fromarray(np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels))
    if cmyk:
        im = im.convert("CMYK")
    options = {}
    if fmt != "bmp":
        if icc := _icc_for(like, b"RGB " if fmt == "webp" else _space(pixels.shape[2], cmyk)):
            options["icc_profile"] = icc
        if like.exif:
            options["exif"] = like.exif
    if dpi and fmt != "webp":
        options["dpi"] = dpi
    if fmt == "png":
        options["compress_level"] = compress_level
    elif fmt == "jpeg":
        options["quality"] = quality
    elif fmt == "webp":
        if quality >= 100:  # exact: keep the colour under fully transparent pixels too
            options.update(lossless=True, exact=True)
        else:
            options["quality"] = quality
    out = io.BytesIO()
    im.save(out, format=_PILLOW_FORMATS[fmt], **options)
    return out.getvalue()


def _encode_png16(pixels, like, dpi, compress_level) -> bytes:
    """libpng writes 16-bit PNGs Pillow cannot; the metadata chunks go in after IHDR."""
    png = imagecodecs.png_encode(pixels[..., 0] if pixels.shape[2] == 1 else pixels, level=compress_level)
    chunks = b""
    if icc := _icc_for(like, _space(pixels.shape[2], False)):
        chunks += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi:
        per_metre = (round(dpi[0] / 0.0254), round(dpi[1] / 0.0254))
        chunks += _png_chunk(b"pHYs", struct.pack(">IIB", *per_metre, 1))
    if like.exif:
        chunks += _png_chunk(b"eXIf", like.exif.removeprefix(_EXIF_PREFIX))
    ihdr_end = 8 + 25  # signature, then IHDR: length, type, 13 bytes, CRC
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _encode_tiff(pixels, like, dpi, cmyk, compress_level) -> bytes:
    channels = pixels.shape[2]
    photometric = "minisblack" if channels <= 2 else "rgb"
    extrasamples = None
    if channels in (2, 4):
        extrasamples = [like.info.get("extrasample", tifffile.EXTRASAMPLE.UNASSALPHA)]
    if cmyk:
        pixels, photometric = np.asarray(Image.fromarray(pixels).convert("CMYK")), "separated"
    out = io.BytesIO()
    tifffile.imwrite(
        out,
        pixels[..., 0] if channels == 1 else pixels,  # tifffile reads H x W x 1 as H pages
        photometric=photometric,
        extrasamples=extrasamples,
        compression="zlib",
        compressionargs={"level": compress_level},
        predictor=True,
        iccprofile=_icc_for(like, _space(channels, cmyk)),
        resolution=dpi,
        resolutionunit="inch" if dpi else None,
        metadata=None,
    )
    return out.getvalue()


def raster_tiff_options(like: DecodedImage, out_height: int, out_width: int) -> dict:
    """tifffile.write keywords that make a raster's output look like its source: photometric,
    extra samples, and the GeoTIFF/GDAL tags rescaled to the output size (also used by the
    streaming writer)."""
    raster = like.raster
    bands = like.pixels.shape[2]
    in_h, in_w = like.pixels.shape[:2]
    color = 3 if raster.photometric == "rgb" and bands >= 3 else 1
    extras = list(raster.extrasamples)
    if len(extras) != bands - color:
        extras = [tifffile.EXTRASAMPLE.UNASSALPHA if b == raster.alpha else tifffile.EXTRASAMPLE.UNSPECIFIED
                  for b in range(color, bands)]
    geo = raster.geo.scaled(out_width / in_w, out_height / in_h) if raster.geo is not None else None
    return {
        "photometric": "rgb" if color == 3 else "minisblack",
        "planarconfig": "contig" if bands > 1 else None,
        "extrasamples": extras or None,
        "extratags": geo.extratags() if geo is not None else [],
        "metadata": None,
    }


def _encode_raster_tiff(pixels, like, dpi, compress_level) -> bytes:
    """Tiled (256 x 256, as GDAL writes) when the image is at least a tile in both
    directions, zlib with a predictor, every band contiguous, tags from the source."""
    h, w, bands = pixels.shape
    out = io.BytesIO()
    tifffile.imwrite(
        out,
        pixels[..., 0] if bands == 1 else pixels,
        compression="zlib",
        compressionargs={"level": compress_level},
        predictor=True,
        tile=(256, 256) if min(h, w) >= 256 else None,
        resolution=dpi,
        resolutionunit="inch" if dpi else None,
        **raster_tiff_options(like, h, w),
    )
    return out.getvalue()
