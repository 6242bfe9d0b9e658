"""TIFF photos and rasters: tifffile for what it decodes sample for sample, Pillow for the rest.

How the first page is read (`route`, from its tags alone):

- GeoTIFF or GDAL tags (`gdal_tagged`) on a page whose samples decode as stored (every
  layout below but palette and the Pillow ones): rasterio (formats/gdal.py), which reads
  the georeferencing and GDAL metadata too; streamed through rasterio as well.
- MINISBLACK / RGB samples of 8, 16 or 32 bits: tifffile, as stored (`tiff_layout`: a photo,
  or a raster when it has int16 samples or another band count). Only these
  are streamed window by window (formats/windows.py).
- YCbCr JPEG: tifffile/imagecodecs decode the JPEG stream to RGB, whatever the
  YCbCrSubsampling tag says (libtiff refuses a file whose tag and stream disagree).
- 2-7 (or 9-15) bits per sample, and bilevel RGB: tifffile; a photo is scaled to the full
  range of uint8 (uint16), as Pillow does for 2 and 4 bits (4-bit 0..15 -> 0..255 in steps
  of 17), mode "L;4"; a raster keeps its values, with ``stored_range`` (0, 2**bits - 1).
  Either is written back at 8 (16) bits.
- Palette: expanded through the ColorMap to RGB, mode "P" (16-bit ColorMap entries become
  8 bit). A georeferenced palette (a class map) keeps its georeferencing (read by rasterio), and a GDAL_NODATA
  index becomes an alpha band (0 where the index was nodata) since no RGB value means
  nodata. The indices themselves are never upscaled: a model interpolates, and a class map's
  indices are labels; the expansion makes that interpolation a colour one.
- Bilevel (1 sample), MINISWHITE, CMYK, uncompressed YCbCr and other layouts of up to 8
  bits: Pillow (libtiff). Their georeferencing is read by rasterio and carried; Pillow turns a
  TIFF upright as it loads it, which is undone for a georeferenced one (its transform
  refers to the stored grid). One with GDAL_NODATA is refused ("georeferenced CMYK TIFF is
  not supported: ..."), since the nodata value names stored values that Pillow's
  conversion changes.
- No Photometric tag: MINISBLACK for 1-2 samples or more than 4, RGB for 3-4 (libtiff's guess).
- Refused as "unsupported: ...": BitsPerSample differing between samples, other
  photometrics over 8 bits, sample types other than uint8, uint16, int16 and float32.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace

import numpy as np
import tifffile
from PIL import Image

from pipeline.formats import pillow
from pipeline.formats.base import (
    ORIENT, ORIENTATION, PHOTO_DTYPES, TIFF_DTYPES, TYPE_SUFFIX, DecodedImage, ImageDecodeError, add_note, as_dpi,
    as_hwc, check_size, colour_space, finish, icc_for, mode_name,
)
from pipeline.raster import RasterInfo, nodata_text

PH = tifffile.PHOTOMETRIC
JPEG = 7
_STANDARD_BITS = (8, 16, 32, 64)
_RGB_NAMES = {0: "Red", 1: "Green", 2: "Blue"}
_RGB_NAMES_T = ("Red", "Green", "Blue")
_INVERSE = {6: 8, 8: 6}  # the other orientations undo themselves
_KNOWN_PHOTOMETRICS = {int(value) for value in PH}
# ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GDAL_METADATA, GDAL_NODATA, RPCCoefficient
GDAL_TAGS = (33550, 33922, 34264, 34735, 42112, 42113, 50844)


def gdal_tagged(page) -> bool:
    """Whether the page carries GeoTIFF or GDAL tags: then GDAL reads it (formats/gdal.py)."""
    return any(code in page.tags for code in GDAL_TAGS)


def load_gdal(label: str):
    """formats.gdal, or the one-line reason it cannot be used (rasterio is the `geo` extra)."""
    try:
        from pipeline.formats import gdal
    except ImportError as exc:
        raise ImageDecodeError(f"{label}: georeferenced rasters are read with rasterio, which is not installed "
                               f"(pip install 'pipeline[geo]'): {exc}") from exc
    return gdal


@dataclass
class Route:
    """How a page decodes: "samples" (tifffile, as stored), "palette" or "pillow"."""

    how: str
    color: int = 1  # colour samples (1 gray, 3 RGB) of a "samples" page
    bits: int | None = None  # non-standard bits per sample, widened to uint8/uint16
    stream: bool = False  # window by window as stored (formats/windows.py)
    what: str = ""  # the layout, for messages: "CMYK", "bilevel", ...
    notes: list = field(default_factory=list)


def _codec(page) -> str:
    try:
        return tifffile.COMPRESSION(int(page.compression)).name
    except ValueError:
        return f"compression {int(page.compression)}"


def _bytes_per_1_bit(page) -> int:
    """Bytes the page's data takes at 1 bit a sample, rows padded to a byte."""
    planes = page.samplesperpixel if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE else 1
    per_row = -(-page.imagewidth * (page.samplesperpixel // planes) // 8)
    return max(1, per_row * page.imagelength * planes)


def unsupported(label: str, what: str) -> ImageDecodeError:
    return ImageDecodeError(f"{label}: unsupported: {what}")


def _photometric(page: tifffile.TiffPage) -> tuple[int, str, list]:
    """(value, name, notes); a missing tag is guessed as libtiff does, and said."""
    samples = page.samplesperpixel
    if page.tags.get(262) is None:
        value = PH.RGB if samples in (3, 4) else PH.MINISBLACK
        return int(value), value.name, [f"Photometric tag missing: read as {value.name}"]
    value = int(page.photometric)
    try:
        return value, PH(value).name, []
    except ValueError:
        return value, f"photometric {value}", []


def route(page: tifffile.TiffPage, label: str = "image") -> Route:
    """Which decoder reads the page and how; raises ImageDecodeError for what none reads
    faithfully. Tags only: no pixel is read."""
    bits = page.bitspersample
    if isinstance(bits, tuple):
        raise unsupported(label, f"BitsPerSample differs between samples {tuple(int(b) for b in bits)}")
    bits, samples = int(bits), int(page.samplesperpixel)
    photometric, name, notes = _photometric(page)
    if samples < 1 or bits < 1:
        raise ImageDecodeError(f"{label}: corrupt TIFF file ({samples} samples of {bits} bits per pixel)")
    compression = int(page.compression)
    if page.tags.get(258) is None and compression == 1 and \
            _bytes_per_1_bit(page) * 8 <= sum(int(c) for c in page.databytecounts):
        # BitsPerSample defaults to 1, but the data holds 8 or more bits a sample: the tag was lost
        raise ImageDecodeError(f"{label}: corrupt TIFF file (BitsPerSample missing or unreadable)")
    plan = _route(page, label, bits, samples, photometric, name, compression)
    plan.notes = notes
    if plan.how != "pillow" and compression != 1 and compression not in tifffile.TIFF.DECOMPRESSORS:
        raise unsupported(label, f"TIFF compression {_codec(page).removeprefix('compression ')}")
    return plan


def _route(page, label, bits, samples, photometric, name, compression) -> Route:
    if photometric == PH.YCBCR and compression == JPEG:
        if bits != 8 or samples != 3:
            raise unsupported(label, f"YCbCr JPEG TIFF with {samples} samples of {bits} bits")
        return Route("samples", color=3, what="YCbCr JPEG")
    if photometric == PH.PALETTE:
        if samples != 1 or bits > 16:
            raise unsupported(label, f"palette TIFF with {samples} samples of {bits} bits")
        return Route("palette", what="palette")
    if photometric in (PH.MINISBLACK, PH.RGB):
        color = 3 if photometric == PH.RGB else 1
        if samples < color:
            raise ImageDecodeError(f"{label}: RGB TIFF with {samples} samples per pixel")
        if bits == 1 and samples == 1:
            return Route("pillow", what="bilevel")
        if bits in _STANDARD_BITS:
            return Route("samples", color=color, stream=True)
        if bits < 16:
            return Route("samples", color=color, bits=bits, what=f"{bits}-bit")
        raise unsupported(label, f"{bits}-bit samples in a {name} TIFF")
    if photometric not in _KNOWN_PHOTOMETRICS:
        raise unsupported(label, f"TIFF {name}")
    if bits <= 8:
        what = {PH.SEPARATED: "CMYK", PH.YCBCR: "YCbCr", PH.MINISWHITE: "min-is-white"}.get(photometric, name)
        return Route("pillow", what=what if bits > 1 else f"bilevel {what}")
    raise unsupported(label, f"{name} TIFF at {bits} bits per sample")


def tiff_layout(page: tifffile.TiffPage, label: str = "image") -> tuple[RasterInfo | None, dict] | None:
    """How a page that decodes sample for sample (and so can be streamed) maps to a
    DecodedImage: (raster info, or None for a photo; info). None for every other page
    (palette, bilevel, CMYK, YCbCr, odd bit depths): those decode in memory only.
    Raises ImageDecodeError for what cannot be decoded faithfully."""
    plan = route(page, label)
    if not plan.stream:
        return None
    return classify(page, plan.color, label, page.dtype)


def classify(page, color: int, label: str, dtype, bits: int | None = None) -> tuple[RasterInfo | None, dict]:
    """Photo or raster, from the samples' type and count (GDAL-tagged pages go to formats/gdal.py)."""
    if dtype is None or np.dtype(dtype).name not in TIFF_DTYPES:
        raise unsupported(label, f"sample type {dtype} in TIFF (supported: {', '.join(TIFF_DTYPES)})")
    dtype = np.dtype(dtype)
    samples = int(page.samplesperpixel)
    extras = tuple(int(e) for e in page.extrasamples) if page.extrasamples else ()
    if dtype.name in PHOTO_DTYPES and samples - color in (0, 1):  # a photo
        info = {}
        if samples > color:  # keep associated / unassociated / unspecified for TIFF output
            info["extrasample"] = extras[0] if extras else 0
        return None, info
    names = {}
    alpha = None
    for i, kind in enumerate(extras):
        if kind in (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA) and color + i < samples:
            alpha = color + i
            break
    if color == 3:
        names = dict(_RGB_NAMES)
    raster = RasterInfo(
        kind="tiff", bands=samples, alpha=alpha, names=names,
        photometric="rgb" if color == 3 else "minisblack", extrasamples=extras,
        stored_range=(0.0, float((1 << bits) - 1)) if bits else None,
    )
    return raster, {}


def tiff_mode(pixels: np.ndarray, raster: RasterInfo | None) -> str:
    """Mode name: "RGB;16" for photos; rasters "L;16S" (one band), "RGB" (RGB
    photometric), else "<bands>B" with the type suffix, e.g. "4B;16"."""
    if raster is None:
        return mode_name(pixels)
    bands = pixels.shape[2]
    base = "L" if bands == 1 else "RGB" if raster.photometric == "rgb" and bands == 3 else f"{bands}B"
    return base + TYPE_SUFFIX[pixels.dtype.name]


def tiff_dpi(page: tifffile.TiffPage) -> tuple[float, float] | None:
    try:
        per_inch = {2: 1.0, 3: 2.54}.get(page.tags.valueof(296, 2))  # ResolutionUnit: inch, cm
        x, y = page.tags.valueof(282), page.tags.valueof(283)
        if per_inch is None or not x or not y or not x[1] or not y[1]:
            return None
        return as_dpi((x[0] / x[1] * per_inch, y[0] / y[1] * per_inch))
    except (TypeError, ValueError, IndexError, ZeroDivisionError):  # a malformed tag is no dpi
        return None


def _page_count(tif: tifffile.TiffFile, info: dict) -> int:
    try:
        return len(tif.pages)
    except Exception as exc:  # a damaged later IFD must not cost the first page
        add_note(info, f"pages after the first not counted ({type(exc).__name__}: {exc})")
        return 1


def _georeferenced(geo) -> bool:
    return geo is not None and geo.georeferenced


def _read_geo(data: bytes, page, label: str):
    """The GeoInfo of a GDAL-tagged page that tifffile or Pillow decodes, else None."""
    return load_gdal(label).read_geo(data, label) if gdal_tagged(page) else None


# --------------------------------------------------------------------------- decoding


def decode(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        if not tif.pages:
            raise ImageDecodeError(f"{label}: corrupt TIFF file (no image in it)")
        page = tif.pages[0]
        check_size(page.imagewidth, page.imagelength, label, max_pixels)
        plan = route(page, label)
        info: dict = {}
        for note in plan.notes:
            add_note(info, note)
        frames = _page_count(tif, info)
        if plan.how == "pillow":
            return _via_pillow(data, page, plan, label, max_pixels, info)
        if plan.how == "palette":
            return _palette(data, page, label, frames, info)
        if gdal_tagged(page):
            decoded = load_gdal(label).decode(data, label, max_pixels)
            decoded.info.update(info)
            if frames > 1:
                decoded.info["frames"] = frames
            return decoded
        dtype = page.dtype
        if plan.bits:
            dtype = np.dtype(np.uint8 if plan.bits <= 8 else np.uint16)
        raster, layout_info = classify(page, plan.color, label, dtype, plan.bits)
        info.update(layout_info)
        pixels = _samples(page, label)
        if plan.bits:
            pixels = _widen(pixels, plan.bits, photo=raster is None)
            kept = f"scaled to {pixels.dtype.itemsize * 8} bits" if raster is None else \
                f"kept as values 0..{(1 << plan.bits) - 1}"
            add_note(info, f"{plan.bits}-bit samples {kept}")
        if pixels.shape[2] != page.samplesperpixel:
            raise ImageDecodeError(f"{label}: corrupt TIFF file ({pixels.shape[2]} samples decoded, "
                                   f"{page.samplesperpixel} declared)")
        mode = tiff_mode(pixels, raster)
        if plan.bits and raster is None:
            mode = ("L", "LA", "RGB", "RGBA")[pixels.shape[2] - 1] + f";{plan.bits}"
        return finish(
            pixels, "tiff", mode, icc=page.tags.valueof(34675), exif=None,
            orientation=page.tags.valueof(ORIENTATION, 1),
            dpi=tiff_dpi(page), frames=frames, info=info, raster=raster,
        )


def _samples(page: tifffile.TiffPage, label: str) -> np.ndarray:
    """H x W x samples as tifffile decodes them, in native byte order."""
    pixels = page.asarray()
    if page.axes == "SYX":  # planar configuration "separate"
        pixels = np.moveaxis(pixels, 0, -1)
    elif page.axes not in ("YX", "YXS"):
        raise unsupported(label, f"TIFF layout {page.axes!r}")
    if pixels.shape[:2] != (page.imagelength, page.imagewidth):
        raise ImageDecodeError(f"{label}: corrupt TIFF file (decoded {pixels.shape[:2]}, "
                               f"declared {page.imagelength} x {page.imagewidth})")
    pixels = as_hwc(pixels)
    if pixels.dtype == bool:
        pixels = pixels.view(np.uint8)
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)


def _widen(pixels: np.ndarray, bits: int, *, photo: bool) -> np.ndarray:
    """Samples of `bits` bits in uint8 (uint16); a photo scaled to the container's full range."""
    container = np.uint8 if bits <= 8 else np.uint16
    top = (1 << bits) - 1
    values = np.minimum(pixels.astype(np.uint32), top)
    if photo:
        full = np.iinfo(container).max
        values = (values * full + top // 2) // top
    return values.astype(container)


def _palette(data: bytes, page: tifffile.TiffPage, label: str, frames: int, info: dict) -> DecodedImage:
    colormap = page.colormap
    if colormap is None or np.ndim(colormap) != 2 or np.shape(colormap)[0] != 3:
        raise ImageDecodeError(f"{label}: corrupt TIFF file (palette image without a valid ColorMap)")
    colormap = np.asarray(colormap)
    if colormap.max(initial=0) > 255:  # 16-bit entries, as the spec says (some writers store 8-bit ones)
        colormap = colormap >> 8  # right for both v * 257 (GDAL, tifffile) and v << 8 (libtiff, Pillow)
    table = np.ascontiguousarray(colormap.T.astype(np.uint8))  # entries x RGB
    indices = _samples(page, label)[..., 0]
    rgb = table[np.minimum(indices, len(table) - 1)]
    geo = _read_geo(data, page, label)
    raster = None
    if geo is not None:
        alpha = None
        nodata = geo.nodata
        if nodata is not None and nodata.is_integer() and 0 <= nodata < len(table):
            geo = replace(geo, nodata=None)  # the alpha band says it now; no RGB value means nodata
            rgb = np.dstack([rgb, np.where(indices == nodata, 0, 255).astype(np.uint8)])
            alpha = 3
            add_note(info, f"palette expanded to RGB; nodata index {nodata_text(nodata)} became an alpha band")
        else:  # no nodata, or one no index can hold (then kept verbatim, as for other rasters)
            add_note(info, "palette expanded to RGB")
        geo = geo.with_bands(("Red", "Green", "Blue", "Alpha")[: rgb.shape[2]])
        raster = RasterInfo(
            kind="geotiff" if geo.georeferenced else "tiff", bands=rgb.shape[2], nodata=None, alpha=alpha,
            names=dict(_RGB_NAMES), geo=geo, photometric="rgb",
            extrasamples=(int(tifffile.EXTRASAMPLE.UNASSALPHA),) if alpha is not None else (),
        )
    orientation = 1 if _georeferenced(geo) else page.tags.valueof(ORIENTATION, 1)
    return finish(rgb, "tiff", "P", icc=page.tags.valueof(34675), exif=None, orientation=orientation,
                  dpi=tiff_dpi(page), frames=frames, info=info, raster=raster)


def _via_pillow(data, page, plan: Route, label, max_pixels, info) -> DecodedImage:
    """libtiff decodes it; the georeferencing, which Pillow does not keep, comes from rasterio."""
    geo = _read_geo(data, page, label)
    if geo is not None and geo.nodata is not None:
        kind = "georeferenced" if geo.georeferenced else "GDAL-tagged"
        raise ImageDecodeError(
            f"{label}: {kind} {plan.what} TIFF is not supported: its GDAL_NODATA "
            f"{nodata_text(geo.nodata)} names stored values, which the conversion for the model changes"
        )
    try:
        decoded = pillow.decode(data, "tiff", label, max_pixels)  # Pillow turns TIFFs upright as it loads them
    except Image.UnidentifiedImageError as exc:  # tifffile read the header: it is the layout libtiff refuses
        raise unsupported(label, f"{plan.what} TIFF of {page.samplesperpixel} samples of {page.bitspersample} "
                                 f"bits, {_codec(page)} (libtiff cannot decode it)") from exc
    orientation = page.tags.valueof(ORIENTATION, 1)
    if geo is not None and plan.what == "CMYK":
        add_note(info, "georeferenced CMYK is written back as RGB (GDAL writes GeoTIFFs as RGB, not CMYK)")
    if _georeferenced(geo) and orientation in ORIENT:  # back to the stored grid, which the transform refers to
        decoded.pixels = np.ascontiguousarray(ORIENT[_INVERSE.get(orientation, orientation)](decoded.pixels))
    notes = info.get("notes", []) + decoded.info.get("notes", [])
    decoded.info.update(info)
    if notes:
        decoded.info["notes"] = notes
    if geo is not None:
        bands = decoded.pixels.shape[2]
        alpha = bands - 1 if bands in (2, 4) else None
        geo = geo.with_bands((("Gray",) if bands <= 2 else _RGB_NAMES_T) + (("Alpha",) if alpha is not None else ()))
        decoded.raster = RasterInfo(
            kind="geotiff" if geo.georeferenced else "tiff", bands=bands, nodata=None, alpha=alpha,
            names=dict(_RGB_NAMES) if bands >= 3 else {}, geo=geo, photometric="rgb" if bands >= 3 else "minisblack",
            extrasamples=(int(tifffile.EXTRASAMPLE.UNASSALPHA),) if alpha is not None else (),
        )
    return decoded


# --------------------------------------------------------------------------- encoding


def encode(pixels, like, dpi, cmyk, compress_level) -> bytes:
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
        iccprofile=icc_for(like, colour_space(channels, cmyk)),
        resolution=dpi,
        resolutionunit="inch" if dpi else None,
        metadata=None,
    )
    return out.getvalue()


def raster_tiff_options(like, out_height: int, out_width: int) -> dict:
    """tifffile.write keywords that make a raster's output look like its source: photometric
    and extra samples (also used by the streaming writer; georeferenced rasters are written
    by formats/gdal.py). `like` is a DecodedImage or an ImageHeader."""
    raster = like.raster
    bands = like.shape[2]
    color = 3 if raster.photometric == "rgb" and bands >= 3 else 1
    extras = list(raster.extrasamples)
    if len(extras) != bands - color:
        extras = [tifffile.EXTRASAMPLE.UNASSALPHA if b == raster.alpha else tifffile.EXTRASAMPLE.UNSPECIFIED
                  for b in range(color, bands)]
    return {
        "photometric": "rgb" if color == 3 else "minisblack",
        "planarconfig": "contig" if bands > 1 else None,
        "extrasamples": extras or None,
        "metadata": None,
    }


def encode_raster(pixels, like, dpi, compress_level, *, cmyk: bool = False) -> bytes:
    """Tiled (256 x 256, as GDAL writes) when the image is at least a tile in both
    directions, zlib with a predictor, every band contiguous, tags from the source. A CMYK
    source (decoded to RGB) is converted back, as for photos."""
    h, w, bands = pixels.shape
    options = raster_tiff_options(like, h, w)
    if cmyk:
        pixels = np.asarray(Image.fromarray(pixels).convert("CMYK"))
        bands = 4
        options.update(photometric="separated", extrasamples=None, planarconfig="contig")
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
        **options,
    )
    return out.getvalue()
