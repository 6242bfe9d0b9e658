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
  XMP is not carried. Damaged EXIF is dropped (the image is still upscaled).
- TIFF samples of 2-7 bits are scaled to 8 bits (tiff.py); 16-bit photos keep all 16.

Whatever is dropped or changed on the way is listed in ``info["notes"]`` (strings, for
the row's note), e.g. "EXIF dropped: Corrupt EXIF data ...".

Rasters (see raster/): a TIFF with GeoTIFF or GDAL tags, a JPEG 2000 file, int16 samples,
or a sample layout that is not L/LA/RGB/RGBA (e.g. 4 or 13 bands) decodes with ``raster``
set: all its bands in their order and type (uint8, uint16, int16, float32), and is
written back only as TIFF. Georeferenced and GDAL-tagged ones are read and written through
rasterio (gdal.py: georeferencing rescaled, nodata and band metadata carried, a
Cloud-Optimized GeoTIFF by default), whichever decoder read their pixels (tiff.py); they
keep their stored pixel grid (the Orientation tag is not applied: the geotransform refers
to the stored grid). DICOM (dicom.py, the optional ``dicom`` extra) decodes its stored values, every
frame of a multi-frame instance (H x W x frames*samples, ``raster.frames``), and is written
back as a derived DICOM instance. NIfTI volumes (nifti.py, the optional ``nifti`` extra)
decode to their stack of slices (H x W x slices) in the stored type and are written back
as the same kind of NIfTI, affine and zooms rescaled in-plane.

Modules: sniff (magic bytes), pillow (8-bit PNG reads, JPEG, WebP, BMP, GIF, libtiff TIFFs),
png (16-bit PNG reads, every PNG write), tiff, gdal (rasterio), dicom, nifti, windows (streaming reads of plain TIFFs), base (the shared types). Every
decode failure is an ImageDecodeError naming the file, in one line; every encode failure
an ImageEncodeError.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from pipeline.formats import nifti, pillow, png, tiff
from pipeline.formats.base import (
    DEFAULT_MAX_PIXELS, ORIENTATION, TIFF_DTYPES, DecodedImage, ImageDecodeError, ImageEncodeError, ImageHeader,
    ImageTooLargeError, to_rgb8,
)
from pipeline.errors import one_line_text
from pipeline.formats.base import check_size as _check_size
from pipeline.formats.sniff import TIFF_MAGIC, not_an_image, png_bit_depth
from pipeline.formats.sniff import sniff as _sniff  # `formats.sniff` stays the module
from pipeline.formats.tiff import raster_tiff_options, tiff_layout, tiff_mode
from pipeline.formats.tiff import tiff_dpi as _tiff_dpi

__all__ = [
    "DEFAULT_MAX_PIXELS", "ORIENTATION", "TIFF_MAGIC", "DecodedImage", "ImageDecodeError", "ImageEncodeError",
    "ImageHeader", "ImageTooLargeError", "_check_size", "_tiff_dpi", "decode_image", "encode_image",
    "output_format", "raster_tiff_options", "tiff_layout", "tiff_mode", "to_rgb8", "check_output",
    "OutputFormatError", "is_volume",
]

_EXTENSIONS = {"png": ".png", "tiff": ".tif", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "dicom": ".dcm",
               **nifti.EXTENSIONS}
_RASTER_ONLY = ("jp2",)  # sources GDAL reads that are written as (Cloud-Optimized Geo)TIFF
_ALIASES = {"jpg": "jpeg", "tif": "tiff", "dcm": "dicom", "nii": "nifti", "nii.gz": "nifti-gz"}
_REQUESTABLE = ("png", "tiff", "jpeg", "webp")


def output_format(src_format: str, requested: str | None) -> tuple[str, str]:
    """(format, extension) to write; GIF becomes PNG since a palette would ruin the upscale.
    DICOM is written as DICOM (a derived instance): another format would drop the
    spacing and the instance's identity, so asking for one is an error; NIfTI as the same
    kind of NIfTI (.nii or .nii.gz), for the same reason."""
    if src_format == "dicom":
        if requested and _canonical(requested) != "dicom":
            raise ValueError(f"DICOM input is written as a derived DICOM instance; --format {requested} "
                             "would drop its pixel spacing and UIDs")
        return "dicom", _EXTENSIONS["dicom"]
    if src_format in nifti.FORMATS:
        if requested and _canonical(requested) not in nifti.FORMATS:
            raise ValueError(f"NIfTI input is written as NIfTI; --format {requested} would drop its affine, "
                             "voxel sizes and every slice but one")
        return src_format, _EXTENSIONS[src_format]
    if requested:
        fmt = _canonical(requested)
        if fmt not in _REQUESTABLE:
            choices = ", ".join(_REQUESTABLE)
            raise ValueError(f"unsupported output format {requested!r}; choose one of {choices}")
    else:
        fmt = "png" if src_format == "gif" else "tiff" if src_format in _RASTER_ONLY else _canonical(src_format)
        if fmt not in _EXTENSIONS:
            raise ValueError(f"unknown source format {src_format!r}")
    return fmt, _EXTENSIONS[fmt]


def _canonical(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    return _ALIASES.get(fmt, fmt)


# --------------------------------------------------------------------------- decoding


def _decode_dicom(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    from pipeline.formats import dicom

    return dicom.decode(data, label, max_pixels)


def is_volume(image) -> bool:
    """A NIfTI volume: its pixels are a stack of slices, upscaled slice by slice (stages/infer.py)."""
    return image.format in nifti.FORMATS


def _decode_gdal(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    return tiff.load_gdal(label).decode(data, label, max_pixels)


def _decode_png(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    # Pillow reduces 16-bit RGB/RGBA/LA PNGs to 8 bit; libpng keeps all 16
    if png_bit_depth(data) == 16:
        return png.decode(data, label, max_pixels)
    return pillow.decode(data, "png", label, max_pixels)


_DECODERS = {
    "png": _decode_png,
    "tiff": tiff.decode,
    "dicom": _decode_dicom,
    "jp2": _decode_gdal,
    **{fmt: (lambda data, label, max_pixels, fmt=fmt: pillow.decode(data, fmt, label, max_pixels))
       for fmt in ("jpeg", "gif", "webp", "bmp")},
}


def decode_image(
    data: bytes, *, name: str = "", max_pixels: int | None = DEFAULT_MAX_PIXELS, nifti_plane: str = "auto"
) -> DecodedImage:
    """Decode the first frame (DICOM: every frame) to H x W x C at the source's bit depth,
    upright; a NIfTI volume to its slices in `nifti_plane` (nifti.py), max_pixels then counting voxels.

    Every failure is an ImageDecodeError naming the file, in one line; the library's
    own exception is kept as __cause__.
    """
    label = name or "image"
    if not data:
        raise ImageDecodeError(f"{label}: empty file")
    fmt = _sniff(data)
    if fmt is None:
        raise ImageDecodeError(f"{label}: {not_an_image(data)}")
    try:
        if fmt in nifti.FORMATS:
            decoded = nifti.decode(data, label, max_pixels, compressed=fmt == "nifti-gz", plane=nifti_plane)
        else:
            decoded = _DECODERS[fmt](data, label, max_pixels)
    except ImageDecodeError as exc:
        if "\n" in str(exc) or "\r" in str(exc):
            raise type(exc)(one_line_text(str(exc), 1000)).with_traceback(exc.__traceback__) from exc.__cause__
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: {_bomb_message(exc, max_pixels)}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"{label}: {_describe_failure(fmt, exc)}") from exc
    _check_decoded(decoded, label)
    return decoded


def _bomb_message(exc: Exception, max_pixels: int | None) -> str:
    """One limit, the one in force: --max-pixels, or Pillow's own when max_pixels is None.
    Pillow's text names twice its MAX_IMAGE_PIXELS (which bomb_limit sets to max_pixels),
    so appending it would show the user a second figure they never set."""
    text = str(exc)
    size = re.search(r"Image size \((\d+) pixels\)", text)
    what = f"{int(size.group(1)):,} pixels" if size else "image"
    if max_pixels is not None:
        return f"{what} is over the limit of {max_pixels:,}; raise it with --max-pixels if the image is expected"
    limit = re.search(r"exceeds limit of (\d+) pixels", text)
    figure = f" of {int(limit.group(1)):,}" if limit else ""
    return (f"{what} is over Pillow's decompression-bomb limit{figure} (Image.MAX_IMAGE_PIXELS, "
            "which applies when max_pixels is None)")


def _check_decoded(decoded: DecodedImage, label: str) -> None:
    """What every decoder promises, checked once: H x W x C of a supported type."""
    pixels = decoded.pixels
    if is_volume(decoded):
        types = nifti.DTYPES
    else:
        types = TIFF_DTYPES + (("uint32", "int32") if decoded.format == "dicom" else ())  # DICOM dose grids
    if pixels.ndim != 3 or 0 in pixels.shape or pixels.dtype.name not in types:
        raise ImageDecodeError(f"{label}: decoded to {pixels.shape} {pixels.dtype}, not an image we can upscale")
    if decoded.raster is None and (pixels.shape[2] > 4 or pixels.dtype == np.int16):
        raise ImageDecodeError(f"{label}: decoded to {pixels.shape[2]} {pixels.dtype} channels without raster info")


def _describe_failure(fmt: str, exc: Exception) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return f"corrupt {fmt.upper()} file (header not understood)"
    text = one_line_text(str(exc), 300)
    truncated = isinstance(exc, EOFError) or any(
        hint in text.lower() for hint in ("truncated", "too small", "failed to read")
    )
    return f"{'truncated' if truncated else 'corrupt'} {fmt.upper()} file ({type(exc).__name__}: {text})"


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
    raster_format: str = "cog",
    raster_compress: str = "deflate",
    raster_blocksize: int = 512,
) -> bytes:
    """Encode the upscaled pixels like the source: same dtype and channels, same metadata.

    fmt None means output_format(like.format, None). quality applies to JPEG and WebP
    (WebP is lossless at quality >= 100). dpi is multiplied by dpi_scale, since an
    upscaled image covers the same physical size with more pixels. compress_level is
    zlib's (0-9) for PNG and TIFF: 1 by default, as OpenCV does, because level 6 costs
    about four times the CPU for files some 10% smaller, and on a GPU machine the
    encoder, not the model, is what limits throughput.

    Rasters are written as TIFF; georeferenced (or GDAL-tagged) ones through rasterio
    (gdal.py) with their georeferencing rescaled to the output's size, as a
    Cloud-Optimized GeoTIFF unless raster_format is "gtiff", compressed with
    raster_compress at compress_level in blocks of raster_blocksize; DICOM as a derived
    instance, ``derivation`` giving dicom.encode's keywords (description, uid_seed).
    NIfTI as NIfTI (nifti.py: ``derivation`` gives the descrip note, compress_level the gzip
    level of .nii.gz).
    """
    try:
        fmt = _canonical(fmt) if fmt else output_format(like.format, None)[0]
    except ValueError as exc:
        raise ImageEncodeError(str(exc)) from exc
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != like.pixels.shape[2] or pixels.dtype != like.pixels.dtype:
        raise ImageEncodeError(
            f"pixels are {pixels.shape} {pixels.dtype} but the source was "
            f"H x W x {like.pixels.shape[2]} {like.pixels.dtype}; the output must keep both"
        )
    if 0 in pixels.shape:
        raise ImageEncodeError(f"pixels are {pixels.shape}: nothing to write")
    if is_volume(like) or fmt in nifti.FORMATS:
        if not is_volume(like) or fmt not in nifti.FORMATS:
            raise ImageEncodeError("NIfTI is written only from NIfTI input, and NIfTI input only as NIfTI")
        try:
            return nifti.encode(pixels, like, compressed=fmt == "nifti-gz", compress_level=compress_level,
                                **(derivation or {}))
        except ImageEncodeError:
            raise
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageEncodeError(f"cannot write NIfTI: {type(exc).__name__}: {one_line_text(str(exc), 300)}") from exc
    if like.format == "dicom" or fmt == "dicom":
        if like.format != "dicom" or fmt != "dicom":
            raise ImageEncodeError("DICOM is written only from DICOM input, and DICOM input only as DICOM")
        from pipeline.formats import dicom

        try:
            return dicom.encode(pixels, like, **(derivation or {}))
        except ImageEncodeError:
            raise
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageEncodeError(f"cannot write DICOM: {type(exc).__name__}: {one_line_text(str(exc), 300)}") from exc
    if like.raster is not None and fmt != "tiff":
        raise ImageEncodeError(_raster_refusal(fmt, pixels, like.raster))
    _check_encodable(fmt, pixels)
    dpi = like.info.get("dpi")
    dpi = (dpi[0] * dpi_scale, dpi[1] * dpi_scale) if dpi else None
    cmyk = like.mode == "CMYK" and pixels.shape[2] == 3
    try:
        if fmt == "tiff" and like.raster is not None and like.raster.geo is not None:
            from pipeline.formats import gdal

            options = gdal.OutputOptions(raster_format, raster_compress, raster_blocksize, compress_level)
            return gdal.encode(pixels, like, options)
        if fmt == "tiff" and like.raster is not None:
            return tiff.encode_raster(pixels, like, dpi, compress_level, cmyk=cmyk)
        if fmt == "tiff":
            return tiff.encode(pixels, like, dpi, cmyk, compress_level)
        if fmt == "png":
            return png.encode(pixels, like, dpi, compress_level)
        return pillow.encode(pixels, like, fmt, dpi, cmyk and fmt == "jpeg", quality)
    except ImageEncodeError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageEncodeError(f"cannot write {fmt.upper()}: {type(exc).__name__}: {one_line_text(str(exc), 300)}") from exc


def _raster_refusal(fmt: str, pixels: np.ndarray, raster) -> str:
    """Why a raster cannot be written as fmt, naming only what this raster has: a float
    TIFF without geo tags must not be told about georeferencing it never had."""
    geo = raster.geo
    kept = [what for what, present in (
        ("georeferencing", geo is not None and geo.georeferenced),
        ("nodata value", raster.nodata is not None or (geo is not None and geo.nodata is not None)),
        ("GDAL metadata", geo is not None and geo.has_metadata),
    ) if present]
    dtype, bands = pixels.dtype.name, pixels.shape[2]
    if dtype not in (("uint8", "uint16") if fmt == "png" else ("uint8",)):
        why = "(it has no signed samples)" if dtype.startswith("int") else "without losing precision"
        problem = f"{fmt.upper()} cannot store {dtype} pixels {why}"
    elif bands > 4:
        problem = f"{fmt.upper()} cannot store {bands} bands"
    else:
        problem = ""
    if kept:
        kept_text = ", ".join(kept[:-1]) + (" and " if len(kept) > 1 else "") + kept[-1]
        if problem:
            return f"{problem}, nor keep this raster's {kept_text}; use --format tiff"
        return f"only TIFF keeps this raster's {kept_text}; use --format tiff"
    if problem:
        return f"{problem}; use --format tiff"
    return f"only TIFF keeps this raster's {bands} {dtype} bands as they are; use --format tiff"


class OutputFormatError(ImageEncodeError):
    """The output format asked for cannot hold this image: a setting to change, not a bad
    file (so never quarantined), and known from the decoded image before any inference."""


def check_output(like: DecodedImage, requested: str | None) -> str:
    """The format `like` will be written in, or OutputFormatError saying why it cannot be
    (called before inference, so a refusal costs no model time)."""
    try:
        fmt = output_format(like.format, requested)[0]
    except ValueError as exc:
        raise OutputFormatError(str(exc)) from exc
    try:
        if like.raster is not None and fmt not in ("tiff", "dicom", *nifti.FORMATS):
            raise ImageEncodeError(_raster_refusal(fmt, like.pixels, like.raster))
        if fmt != "dicom" and fmt not in nifti.FORMATS:
            _check_encodable(fmt, like.pixels)
    except ImageEncodeError as exc:
        raise OutputFormatError(str(exc)) from None
    return fmt


def _check_encodable(fmt: str, pixels: np.ndarray) -> None:
    """Refuse, with the way out, what the format would silently degrade."""
    dtype, channels = pixels.dtype.name, pixels.shape[2]
    if fmt not in _EXTENSIONS:
        raise ImageEncodeError(f"unsupported output format {fmt!r}")
    if fmt == "tiff":
        if dtype not in TIFF_DTYPES:
            raise ImageEncodeError(f"TIFF output supports {', '.join(TIFF_DTYPES)}, not {dtype}")
        return
    allowed = ("uint8", "uint16") if fmt == "png" else ("uint8",)
    if dtype not in allowed:
        way_out = "--format tiff" if dtype == "float32" else "--format png or --format tiff"
        raise ImageEncodeError(
            f"{fmt.upper()} cannot store {dtype} pixels without losing precision; use {way_out}"
        )
    if channels > 4:
        raise ImageEncodeError(f"{fmt.upper()} cannot store {channels} channels; use --format tiff")
    if fmt == "jpeg" and channels in (2, 4):
        raise ImageEncodeError(
            "JPEG has no alpha channel; use --format png, webp or tiff to keep transparency"
        )
    if fmt == "bmp" and channels in (2, 4):
        raise ImageEncodeError(
            "BMP alpha is ignored by Pillow and most readers; use --format png to keep transparency"
        )
