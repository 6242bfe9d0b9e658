"""Georeferenced rasters through rasterio (GDAL): GeoTIFF and COG, JPEG 2000, read and written.

GDAL already knows every way a file can be georeferenced (GeoKeys, tie points, model
transformations, PixelIsPoint, GCPs, RPCs, GDAL_METADATA), so nothing here
parses tags: a dataset is opened, its georeferencing and band metadata taken as rasterio
gives them (`GeoInfo`), rescaled for the output (`GeoInfo.scaled`), and set on the output
dataset, which GDAL writes back in the same form.

- Reading: bytes already in memory through a MemoryFile (the read stage has them); large
  inputs (streaming) window by window from any fsspec URL through rasterio's `opener`
  (GDAL reads the byte ranges it needs through the file object), local paths directly.
- Writing: a Cloud-Optimized GeoTIFF by default (GDAL's COG driver: tiled, overviews,
  the IFDs first), or a plain tiled GeoTIFF (`--raster-format gtiff`). A streamed output
  is written window by window into a temporary tiled GeoTIFF, then copied to a COG.
- GDAL's block cache is capped (`CACHE_MB`): its default, 5% of the machine's memory,
  would let a streamed write hold gigabytes of dirty blocks.

A per-dataset mask (an internal or .msk mask, e.g. beside JPEG-compressed orthophotos)
travels as one more band, the alpha band of the band plan (0 = masked), and is written
back as the output's mask, upscaled nearest-neighbour as alpha is.

Refused (ImageDecodeError, one line): sample types other than uint8, uint16, int16 and
float32; bands of different types. What GDAL says about a damaged file is the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

CACHE_MB = 256  # GDAL block cache, MiB: a streamed COG stays within its memory bound
os.environ.setdefault("GDAL_CACHEMAX", str(CACHE_MB))  # read once, when GDAL first caches a block

import rasterio  # noqa: E402  (after GDAL_CACHEMAX)
import rasterio.shutil  # noqa: E402
from rasterio.enums import MaskFlags  # noqa: E402
from rasterio.errors import NotGeoreferencedWarning, RasterioError  # noqa: E402
from rasterio.io import MemoryFile  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from pipeline.formats.base import (  # noqa: E402
    TIFF_DTYPES, TYPE_SUFFIX, DecodedImage, ImageDecodeError, ImageEncodeError, ImageHeader, add_note, check_size,
)
from pipeline.raster import RasterInfo, nodata_text, usable_nodata  # noqa: E402

warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)  # a GDAL-tagged TIFF need not be georeferenced

DRIVER_FORMATS = {"GTiff": "tiff", "COG": "tiff", "JP2OpenJPEG": "jp2"}  # the DecodedImage.format of a driver
_RGB = ("Red", "Green", "Blue")
_NOT_NAMES = ("Gray", "Undefined")  # colour interpretations that name nothing


@dataclass(frozen=True)
class OutputOptions:
    """How georeferenced rasters are written (RunSpec's raster_format, raster_compress,
    raster_blocksize, compress_level; checked there)."""

    format: str = "cog"
    compress: str = "deflate"
    blocksize: int = 512
    level: int = 1

    def creation(self, dtype, *, driver: str | None = None, blocksize: int | None = None) -> dict:
        """GDAL creation options for `driver` (default: the chosen format's)."""
        driver = driver or ("COG" if self.format == "cog" else "GTiff")
        block = blocksize or self.blocksize
        options: dict = {"driver": driver, "BIGTIFF": "IF_SAFER"}
        if driver == "COG":
            options.update(BLOCKSIZE=block)
        else:
            options.update(tiled=True, blockxsize=block, blockysize=block)
        if self.compress != "none":
            options["compress"] = self.compress
            floating = np.dtype(dtype).kind == "f"
            options["predictor"] = "YES" if driver == "COG" else (3 if floating else 2)
            level = max(1, self.level)
            if self.compress == "deflate":
                options["LEVEL" if driver == "COG" else "ZLEVEL"] = level
            elif self.compress == "zstd":
                options["LEVEL" if driver == "COG" else "ZSTD_LEVEL"] = level
        return options


@dataclass(frozen=True)
class GeoInfo:
    """A raster's georeferencing and GDAL metadata as rasterio reads them; band-level
    fields have one entry per band (empty when the source had none)."""

    crs_wkt: str | None = None
    epsg: int | None = None
    transform: tuple | None = None  # affine (a, b, c, d, e, f) of pixel corners, rasterio's order
    gcps: tuple = ()  # (row, col, x, y, z, id, info) per ground control point
    gcp_crs_wkt: str | None = None
    rpcs: dict | None = None  # rasterio.rpc.RPC.to_dict()
    nodata: float | None = None
    descriptions: tuple = ()
    colorinterp: tuple = ()  # GDAL colour interpretation names: "Red", "Gray", "Alpha", ...
    scales: tuple = ()
    offsets: tuple = ()
    units: tuple = ()
    tags: dict = field(default_factory=dict)  # dataset metadata, default domain
    band_tags: tuple = ()  # per band, default domain
    driver: str = "GTiff"

    @property
    def georeferenced(self) -> bool:
        return self.transform is not None or bool(self.gcps) or self.rpcs is not None

    @property
    def has_metadata(self) -> bool:
        """GDAL metadata beyond the baseline TIFF tags GDAL also lists (TIFFTAG_*)."""
        return any(not k.startswith("TIFFTAG_") for k in self.tags) or any(self.band_tags) or any(self.descriptions)

    def crs(self) -> str | None:
        """'EPSG:<code> (<name>)' when the CRS has an EPSG code, else its name; None without one."""
        wkt = self.crs_wkt or self.gcp_crs_wkt
        if not wkt:
            return None
        match = re.match(r'\s*\w+\["([^"]*)"', wkt)
        name = match.group(1) if match else None
        if self.epsg:
            return f"EPSG:{self.epsg}" + (f" ({name})" if name else "")
        return name or "user-defined"

    def geotransform(self) -> list[float] | None:
        """GDAL's geotransform (x0, dx, rx, y0, ry, dy), or None."""
        if self.transform is None:
            return None
        a, b, c, d, e, f = self.transform
        return [float(v) for v in (c, a, b, f, d, e)]

    def transform_json(self) -> str | None:
        gt = self.geotransform()
        return json.dumps(gt) if gt is not None else None

    def names(self) -> dict[int, str]:
        """Band index -> colour interpretation, for the bands it names ('Red', 'Alpha', ...)."""
        return {b: name for b, name in enumerate(self.colorinterp) if name not in _NOT_NAMES}

    def scaled(self, fx: float, fy: float) -> "GeoInfo":
        """The same ground with fx times the columns and fy times the rows: pixel size divided,
        origin kept; GCP pixel positions multiplied (they are corner-based); RPC line and
        sample offsets and scales moved (RPC image coordinates name pixel centres)."""
        transform = None
        if self.transform is not None:
            a, b, c, d, e, f = self.transform
            transform = (a / fx, b / fy, c, d / fx, e / fy, f)
        gcps = tuple((row * fy, col * fx, *rest) for row, col, *rest in self.gcps)
        rpcs = None
        if self.rpcs is not None:
            rpcs = dict(self.rpcs, line_off=fy * (self.rpcs["line_off"] + 0.5) - 0.5,
                        line_scale=fy * self.rpcs["line_scale"],
                        samp_off=fx * (self.rpcs["samp_off"] + 0.5) - 0.5, samp_scale=fx * self.rpcs["samp_scale"])
        return replace(self, transform=transform, gcps=gcps, rpcs=rpcs)

    def with_bands(self, names: tuple) -> "GeoInfo":
        """The georeferencing for pixels whose bands were remade (a palette expanded to RGB):
        band metadata of the source no longer applies."""
        return replace(self, colorinterp=tuple(names), descriptions=(), scales=(), offsets=(), units=(),
                       band_tags=())


# describe the input file, not the output: its writer, time and resolution (the pixels change)
_STALE_TIFF_TAGS = ("TIFFTAG_SOFTWARE", "TIFFTAG_DATETIME", "TIFFTAG_XRESOLUTION", "TIFFTAG_YRESOLUTION",
                    "TIFFTAG_RESOLUTIONUNIT")


def _without_statistics(tags: dict) -> dict:
    """Tags minus GDAL's STATISTICS_*, which describe the input's pixels (and GDAL would trust),
    and the baseline TIFF tags that describe the input file."""
    return {k: v for k, v in tags.items() if not k.startswith("STATISTICS_") and k not in _STALE_TIFF_TAGS}


def geo_info(ds) -> GeoInfo:
    """The GeoInfo of an open rasterio dataset."""
    crs = ds.crs
    identity = ds.transform.is_identity
    gcps, gcp_crs = ds.gcps
    rpcs = ds.rpcs
    tags = _without_statistics(ds.tags())
    tags.pop("AREA_OR_POINT", None) if tags.get("AREA_OR_POINT") == "Area" else None
    return GeoInfo(
        crs_wkt=crs.to_wkt() if crs else None,
        epsg=crs.to_epsg() if crs else None,
        transform=None if identity and not crs else tuple(ds.transform)[:6],
        gcps=tuple((g.row, g.col, g.x, g.y, g.z, g.id, g.info) for g in gcps),
        gcp_crs_wkt=gcp_crs.to_wkt() if gcps and gcp_crs else None,
        rpcs=rpcs.to_dict() if rpcs else None,
        nodata=None if ds.nodata is None else float(ds.nodata),
        descriptions=tuple(d or "" for d in ds.descriptions) if any(ds.descriptions) else (),
        colorinterp=tuple(ci.name.capitalize() for ci in ds.colorinterp),
        scales=tuple(ds.scales) if any(s != 1 for s in ds.scales) else (),
        offsets=tuple(ds.offsets) if any(o != 0 for o in ds.offsets) else (),
        units=tuple(u or "" for u in ds.units) if any(ds.units) else (),
        tags=tags,
        band_tags=tuple(_without_statistics(ds.tags(b)) for b in ds.indexes),
        driver=ds.driver,
    )


def _dataset_mask(ds) -> bool:
    """Whether the bands share a per-dataset mask (and no alpha band or nodata says it instead)."""
    return all(flags == [MaskFlags.per_dataset] for flags in ds.mask_flag_enums)


def raster_info(ds, label: str) -> tuple[RasterInfo, np.dtype]:
    """RasterInfo and sample type of an open dataset; ImageDecodeError for types we cannot keep.
    With a per-dataset mask, the RasterInfo has one band more: the mask, as alpha."""
    dtypes = set(ds.dtypes)
    if len(dtypes) != 1:
        raise ImageDecodeError(f"{label}: unsupported: bands of different sample types {sorted(dtypes)}")
    dtype = np.dtype(dtypes.pop())
    if dtype.name not in TIFF_DTYPES:
        raise ImageDecodeError(f"{label}: unsupported: sample type {dtype.name} (supported: {', '.join(TIFF_DTYPES)})")
    geo = geo_info(ds)
    names = geo.names()
    alpha = next((b for b, name in sorted(names.items()) if name == "Alpha"), None)
    bits = ds.tags(1, ns="IMAGE_STRUCTURE").get("NBITS")
    stored = (0.0, float((1 << int(bits)) - 1)) if bits and bits.isdigit() and int(bits) < dtype.itemsize * 8 \
        and dtype.kind == "u" else None
    rgb = ds.count >= 3 and tuple(geo.colorinterp[:3]) == _RGB
    mask = alpha is None and _dataset_mask(ds)
    if mask:
        alpha = ds.count
        names = {**names, alpha: "Alpha"}
    return RasterInfo(kind="geotiff" if geo.georeferenced else "tiff", bands=ds.count + mask, nodata=geo.nodata,
                      alpha=alpha, names=names, geo=geo, photometric="rgb" if rgb else "minisblack",
                      stored_range=stored, mask=mask), dtype


def _read(ds, info: RasterInfo, window=None) -> np.ndarray:
    """H x W x bands (the mask last, 0 or 255, when the RasterInfo has one)."""
    pixels = np.moveaxis(ds.read(window=window), 0, -1)
    if info.mask:
        mask = ds.dataset_mask(window=window).astype(pixels.dtype)
        pixels = np.concatenate([pixels, mask[..., None]], axis=2)
    return pixels


def mode_of(bands: int, dtype: np.dtype, info: RasterInfo) -> str:
    """Mode name as tiff.tiff_mode gives it: "L;16", "RGB", "4B;16S"."""
    base = "L" if bands == 1 else "RGB" if info.photometric == "rgb" and bands == 3 else f"{bands}B"
    return base + TYPE_SUFFIX[np.dtype(dtype).name]


@contextlib.contextmanager
def _gdal_errors(label: str, what: str = "raster"):
    """GDAL's complaint about a damaged file as the one-line ImageDecodeError naming it."""
    try:
        yield
    except ImageDecodeError:
        raise
    except (RasterioError, ValueError) as exc:
        cause = exc
        while "See previous exception" in str(cause) and (cause.__cause__ or cause.__context__) is not None:
            cause = cause.__cause__ or cause.__context__  # GDAL's own complaint, not rasterio's summary of it
        text = " ".join(str(cause).split())[:300]
        raise ImageDecodeError(f"{label}: corrupt {what} ({text})") from exc


def read_geo(data: bytes, label: str = "image") -> GeoInfo:
    """The georeferencing of a file in memory, pixels unread (TIFF layouts that tifffile or
    Pillow decode: palette, CMYK, bilevel)."""
    with _gdal_errors(label), MemoryFile(data) as memfile, memfile.open() as ds:
        return geo_info(ds)


def decode(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    """Every band of the first image, H x W x bands in its sample type, with its GeoInfo."""
    with _gdal_errors(label), MemoryFile(data) as memfile, memfile.open() as ds:
        check_size(ds.width, ds.height, label, max_pixels)
        info, dtype = raster_info(ds, label)
        pixels = _read(ds, info)
        fmt = DRIVER_FORMATS.get(ds.driver, "tiff")
        decoded = DecodedImage(pixels=np.ascontiguousarray(pixels), format=fmt, mode=mode_of(ds.count, dtype, info),
                               raster=info)
        if info.nodata is not None and usable_nodata(info.nodata, dtype) is None:
            add_note(decoded.info, f"nodata {nodata_text(info.nodata)} is no {dtype.name} value: not written to the output")
        return decoded


def open_dataset(uri: str, storage_options: dict | None = None):
    """A rasterio dataset on any fsspec URL: local paths directly, anything else through
    rasterio's opener (GDAL reads the ranges it needs through the file object)."""
    from pipeline import store

    fs, path = store.object_at(uri, storage_options)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return rasterio.open(path)
    return rasterio.open(path, opener=fs)


def read_header(uri: str, storage_options: dict, *, threshold: int, name: str) -> ImageHeader | None:
    """The header of a raster over `threshold` pixels (streamed), else None (decoded in memory)."""
    with _gdal_errors(name), open_dataset(uri, storage_options) as ds:
        if ds.width * ds.height <= threshold:
            return None
        info, dtype = raster_info(ds, name)
        return ImageHeader(shape=(ds.height, ds.width, info.bands), dtype=dtype,
                           format=DRIVER_FORMATS.get(ds.driver, "tiff"), mode=mode_of(ds.count, dtype, info),
                           raster=info)


class WindowReader:
    """[y0:y1, x0:x1] of an open dataset as H x W x bands: GDAL decodes only the blocks
    (tiles, strips, JPEG 2000 code-blocks) a window touches, cached in its block cache."""

    STATS_BYTES = 64 << 20  # rows read at a time by the statistics pass

    def __init__(self, ds, info: RasterInfo):
        self.ds, self.info = ds, info
        self.decoded = 0  # windows read

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        self.decoded += 1
        return _read(self.ds, self.info, Window(x0, y0, x1 - x0, y1 - y0))

    def statistics(self, stats):
        """One pass over the image in bands of whole rows (whole blocks high) into `stats`."""
        ds = self.ds
        block_h = ds.block_shapes[0][0] if ds.block_shapes else 1
        row_bytes = ds.width * self.info.bands * np.dtype(ds.dtypes[0]).itemsize
        rows = max(block_h, (self.STATS_BYTES // max(1, row_bytes)) // block_h * block_h)
        for y0 in range(0, ds.height, rows):
            stats.update(_read(ds, self.info, Window(0, y0, ds.width, min(rows, ds.height - y0))))
        return stats


def _profile(like, height: int, width: int, dtype, options: dict) -> tuple[dict, GeoInfo]:
    """rasterio open() keywords for the output of `like` (DecodedImage or ImageHeader)."""
    raster = like.raster
    geo = raster.geo.scaled(width / like.shape[1], height / like.shape[0])
    bands = like.shape[2] - raster.mask
    profile = dict(options, width=width, height=height, count=bands, dtype=np.dtype(dtype).name)
    if geo.crs_wkt:
        profile["crs"] = rasterio.crs.CRS.from_wkt(geo.crs_wkt)
    if geo.transform is not None:
        profile["transform"] = rasterio.Affine(*geo.transform)
    if usable_nodata(geo.nodata, dtype) is not None:  # decode noted one the type cannot hold: not written
        profile["nodata"] = geo.nodata
    if raster.photometric == "rgb" and bands >= 3 and options["driver"] == "GTiff":
        profile["photometric"] = "RGB"  # as the source was; the COG driver takes it from the colour interpretation
    return profile, geo


def _describe(dst, geo: GeoInfo, bands: int) -> None:
    """Set the band metadata, GCPs, RPCs and tags of `geo` on an open output dataset."""
    from rasterio.control import GroundControlPoint
    from rasterio.enums import ColorInterp
    from rasterio.rpc import RPC

    if geo.gcps:
        points = [GroundControlPoint(row=r, col=c, x=x, y=y, z=z, id=i, info=n) for r, c, x, y, z, i, n in geo.gcps]
        dst.gcps = (points, rasterio.crs.CRS.from_wkt(geo.gcp_crs_wkt) if geo.gcp_crs_wkt else None)
    if geo.rpcs is not None:
        dst.rpcs = RPC(**geo.rpcs)
    if len(geo.colorinterp) == bands:
        dst.colorinterp = [ColorInterp[name.lower()] for name in geo.colorinterp]
    for values, attribute in ((geo.descriptions, "descriptions"), (geo.scales, "scales"), (geo.offsets, "offsets"),
                              (geo.units, "units")):
        if len(values) == bands:
            setattr(dst, attribute, values)
    if geo.tags:
        dst.update_tags(**geo.tags)
    for band, tags in enumerate(geo.band_tags[:bands], start=1):
        if tags:
            dst.update_tags(band, **tags)


def _write(dst, pixels: np.ndarray, mask: bool, window=None) -> None:
    """H x W x bands into an open output; the last band as the dataset mask when `mask`."""
    data = pixels[..., :-1] if mask else pixels
    dst.write(np.moveaxis(data, -1, 0), window=window)
    if mask:
        dst.write_mask(np.where(pixels[..., -1] > 0, 255, 0).astype(np.uint8), window=window)


def encode(pixels: np.ndarray, like, options: OutputOptions) -> bytes:
    """The upscaled raster as a COG (or tiled GeoTIFF) in memory, georeferencing rescaled."""
    h, w, _bands = pixels.shape
    profile, geo = _profile(like, h, w, pixels.dtype, options.creation(pixels.dtype))
    try:
        with MemoryFile() as memfile:
            with memfile.open(**profile) as dst:
                _write(dst, pixels, like.raster.mask)
                _describe(dst, geo, profile["count"])
            return memfile.read()
    except RasterioError as exc:
        raise ImageEncodeError(f"cannot write {options.format.upper()}: {' '.join(str(exc).split())[:300]}") from exc


class StreamWriter:
    """An output written window by window: a temporary tiled GeoTIFF beside `path`, then,
    for COG, GDAL's COG copy of it into `path` (overviews built from the file, within
    GDAL's block cache). The temporary file has the output's block size: GDAL builds
    overviews from rows of whole blocks, and with blocks of 1024 a 21960-pixel-wide row of
    them no longer fitted the cache next to the overview's own (measured: every block
    decoded again and again, the COG copy of a Sentinel-2 tile x2 ran for over 15 minutes)."""

    def __init__(self, path: str, like, out_shape: tuple, dtype, options: OutputOptions):
        self.path, self.options = path, options
        self.cog = options.format == "cog"
        self.target = path + ".gtiff.tmp" if self.cog else path
        self.mask = like.raster.mask
        h, w, _bands = out_shape
        fast = replace(options, level=1) if self.cog else options  # the intermediate is read once
        creation = fast.creation(dtype, driver="GTiff")
        profile, self.geo = _profile(like, h, w, dtype, creation)
        self.bands = profile["count"]
        self.dst = rasterio.open(self.target, "w", **profile)

    def write(self, y0: int, x0: int, out: np.ndarray) -> None:
        h, w = out.shape[:2]
        _write(self.dst, out, self.mask, Window(x0, y0, w, h))

    def close(self, ok: bool = True) -> None:
        try:
            if ok:
                _describe(self.dst, self.geo, self.bands)
        finally:
            self.dst.close()
        if ok and self.cog:
            try:
                rasterio.shutil.copy(self.target, self.path, **self.options.creation(self.dst.dtypes[0]))
            finally:
                os.unlink(self.target)
        elif not ok and os.path.exists(self.target) and self.target != self.path:
            os.unlink(self.target)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.close(ok=kind is None)
