"""Sentinel-2 SAFE products (a `.SAFE` folder or a `.SAFE.zip`): the four 10 m bands as one raster.

A SAFE holds each band in a JPEG 2000 file of its own (L2A:
GRANULE/<granule>/IMG_DATA/R10m/T..._B02_10m.jp2; L1C: GRANULE/<granule>/IMG_DATA/T..._B02.jp2)
beside the product's MTD_MSIL2A.xml / MTD_MSIL1C.xml. B02, B03, B04 and B08 share one
10 m grid: each is opened with rasterio (GDAL's JP2OpenJPEG driver), checked to be on
that grid, and stacked in this order into an in-memory GeoTIFF that rasterio writes, so
the product then takes the GeoTIFF path like any other raster (decode, band plan,
georeferenced output, STAC item). The GeoTIFF carries the band names (B02..B08 as band
descriptions), the colour interpretation (Blue, Green, Red: `--band-mode rgb+gray` sends
B04, B03, B02 through the model as RGB and B08 alone), the product's NODATA value and its
PRODUCT_START_TIME and SPACECRAFT_NAME (dataset metadata, which the STAC item reads).

This module only turns bytes into bytes; the read stage lists the product and reads the
files (stages/read.py). Not done: the 20 m and 60 m bands; products of several granules
(before 2016) are refused with a row that says so.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable

from pipeline.formats.base import ImageDecodeError, check_size

BANDS = ("B02", "B03", "B04", "B08")
COMMON_NAMES = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}  # STAC eo common names
_COLOURS = ("blue", "green", "red", "undefined")
_BAND_FILE = re.compile(r"(?:^|/)GRANULE/([^/]+)/IMG_DATA/(?:R10m/)?[^/]*_(B0[2348])(?:_10m)?\.jp2$", re.I)
_METADATA_FILE = re.compile(r"(?:^|/)MTD_MSIL(1C|2A)\.xml$", re.I)
_MAX_METADATA_BYTES = 16 << 20  # a real MTD_MSIL2A.xml is about 60 kB


def is_safe(key: str) -> bool:
    """A Sentinel-2 product by its name: `<product>.SAFE` (a folder) or `<product>.SAFE.zip`."""
    return key.rstrip("/").lower().endswith((".safe", ".safe.zip"))


def to_geotiff(names: list[str], read: Callable[[str], bytes], label: str,
               max_pixels: int | None) -> tuple[bytes, str]:
    """(GeoTIFF bytes of the 10 m bands, a note naming the product) from the product's file
    names (relative to it) and `read(name)`; ImageDecodeError when a band or the metadata
    is missing, the bands are not on one grid, or a file is not JPEG 2000."""
    level, metadata = _metadata(names, read, label)
    files = band_files(names, label)
    try:
        import rasterio
    except ImportError:
        raise ImageDecodeError(f"{label}: Sentinel-2 input needs rasterio: pip install 'pipeline[geo]'") from None
    from rasterio.enums import ColorInterp
    from rasterio.io import MemoryFile

    # Each band goes into the GeoTIFF as soon as it is read: a full tile's band is 0.24 GB
    with MemoryFile() as memory, contextlib.ExitStack() as opened:
        out = None
        for index, band in enumerate(BANDS, 1):
            try:
                with MemoryFile(read(files[band])) as source, source.open() as ds:
                    here = (ds.crs, ds.transform, ds.width, ds.height)
                    if ds.crs is None:
                        raise ImageDecodeError(f"{label}: band {band} ({files[band]}) has no georeferencing")
                    if out is None:
                        check_size(ds.width, ds.height, label, max_pixels)
                        grid, dtype = here, ds.dtypes[0]
                        nodata = ds.nodata if ds.nodata is not None else metadata.get("NODATA")
                        out = opened.enter_context(memory.open(
                            driver="GTiff", width=ds.width, height=ds.height, count=len(BANDS), dtype=dtype,
                            crs=ds.crs, transform=ds.transform, nodata=nodata))
                    elif here != grid:
                        raise ImageDecodeError(f"{label}: band {band} is not on the grid of {BANDS[0]} "
                                               f"({ds.width} x {ds.height} at {ds.transform.a:g} m, not "
                                               f"{grid[2]} x {grid[3]} at {grid[1].a:g} m)")
                    out.write(ds.read(1, out_dtype=dtype), index)
            except rasterio.errors.RasterioError as exc:
                raise ImageDecodeError(f"{label}: band {band} ({files[band]}) is not a readable JPEG 2000 file "
                                       f"({' '.join(str(exc).split())[:200]})") from exc
            out.set_band_description(index, band)
        out.colorinterp = [ColorInterp[name] for name in _COLOURS]
        out.update_tags(**{k: v for k, v in metadata.items() if k != "NODATA"})
        opened.close()  # the GeoTIFF complete before its bytes are taken
        data = memory.read()
    return data, f"Sentinel-2 {level} SAFE: bands {', '.join(BANDS)} (10 m)"


def band_files(names: list[str], label: str) -> dict[str, str]:
    """Band -> file name of the 10 m bands among a product's `names`; ImageDecodeError naming
    what is missing or ambiguous."""
    found: dict[str, list[str]] = {}
    for name in names:
        match = _BAND_FILE.search(name)
        if match:
            found.setdefault(match.group(2).upper(), []).append(name)
    missing = [band for band in BANDS if band not in found]
    if missing:
        raise ImageDecodeError(f"{label}: Sentinel-2 product without its 10 m band{'s' * (len(missing) > 1)} "
                               f"{', '.join(missing)} (no GRANULE/*/IMG_DATA/[R10m/]*_{missing[0]}[_10m].jp2)")
    several = [band for band in BANDS if len(found[band]) > 1]
    if several:
        granules = sorted({_BAND_FILE.search(name).group(1) for name in found[several[0]]})
        raise ImageDecodeError(f"{label}: {len(granules)} granules ({', '.join(granules[:3])}...) hold band "
                               f"{several[0]}; products of several granules are not supported")
    return {band: found[band][0] for band in BANDS}


def _metadata(names: list[str], read: Callable[[str], bytes], label: str) -> tuple[str, dict]:
    """The processing level and the few items of MTD_MSIL*.xml the output carries."""
    candidates = sorted((name for name in names if _METADATA_FILE.search(name)), key=lambda n: n.count("/"))
    if not candidates:
        raise ImageDecodeError(f"{label}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml: not a Sentinel-2 product")
    name = candidates[0]
    text = read(name)[:_MAX_METADATA_BYTES].decode("utf-8", "replace")
    items = {}
    for tag in ("PRODUCT_START_TIME", "SPACECRAFT_NAME", "PRODUCT_TYPE", "PROCESSING_BASELINE"):
        match = re.search(rf"<{tag}>\s*([^<]+?)\s*</{tag}>", text)
        if match:
            items[tag] = match.group(1)
    nodata = re.search(r"<SPECIAL_VALUE_TEXT>\s*NODATA\s*</SPECIAL_VALUE_TEXT>\s*"
                       r"<SPECIAL_VALUE_INDEX>\s*(\d+)\s*</SPECIAL_VALUE_INDEX>", text)
    if nodata:
        items["NODATA"] = float(nodata.group(1))
    return "L" + _METADATA_FILE.search(name).group(1).upper(), items
