"""Gigapixel rasters, window by window: memory bound by the window and the model, not the image.

A TIFF (tiled or stripped; GeoTIFF or photo) or JPEG 2000 file with more than
``--stream-threshold`` pixels (default 4096 x 4096) is never decoded whole: the streaming
strategy of the read, infer and write stages. `probe` (read stage) reads its header only
(rasterio for GeoTIFF/GDAL-tagged TIFFs and JPEG 2000, formats/gdal.py; formats/windows.py
for plain TIFFs); `run` (infer stage) then

1. takes the band statistics in one pass over the file's segments when the radiometric
   scaling needs them (``minmax``; see raster.py), decoding one strip or tile at a time;
2. walks the output in rows of TIFF tiles of about 1024 x 1024 pixels; each window is
   one tile high and a tile or two wide (about 512 input pixels), read from the input
   with a margin of half the model's overlap on every side (`formats.gdal.WindowReader`:
   GDAL's windowed read, its block cache capped; `formats.windows.WindowReader` for plain
   TIFFs: the tiles or strip rows it needs, decoded once and kept in an LRU cache of fixed size);
3. upscales the window with the same engine and the same `BandPlan` as the in-memory
   path: inside the window the engine tiles and blends with tiling.py's window as
   always; the window's margin is then cropped. The margin is half the overlap the
   tiling uses (at least 8 pixels, times the number of model passes); tiled output
   equals whole-image output when a quarter of the overlap covers the receptive field
   (tiling.py), so a margin of twice that leaves the core equal to whole-image output
   too (tested against the in-memory path);
4. writes the window's output into a local temporary file: for a georeferenced raster a
   tiled GeoTIFF through rasterio, then copied by GDAL's COG driver to a Cloud-Optimized
   GeoTIFF with overviews (`formats.gdal.StreamWriter`; `--raster-format gtiff` keeps the
   tiled GeoTIFF); for a plain TIFF, tile by tile through tifffile (BigTIFF when the raw
   output exceeds 2 GiB). The file is in the destination folder when that is local,
   otherwise in the temporary directory; the write stage renames it over the final name,
   or uploads it in one PUT.

Peak memory is the window (input, model inputs, engine activations and stitcher at the
output resolution), the segment cache (`CACHE_BYTES`, or GDAL's block cache,
`formats.gdal.CACHE_MB`) and the writer's buffers,
whatever the image size. `lr_psnr` is accumulated window by window (the window output
downscaled, compared with the window's core), so it is the same figure as for an
in-memory image. Reference metrics (PSNR/SSIM against --reference) are not computed
for streamed images: the reference would be gigapixel too.

Limits: integer scales only (an output tile must start on an input pixel); TIFF
output only; plain (non-georeferenced) TIFFs get no overviews.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import tifffile

from pipeline import formats, raster, store
from pipeline.formats import windows
from pipeline.inference.engine import model_passes

OUTPUT_TILE = 1024  # about this many output pixels per TIFF tile side
WINDOW_INPUT = 512  # about this many input pixels per window width
BIGTIFF_BYTES = 2 << 30  # raw output size from which BigTIFF is written
STREAM_SUFFIXES = (".tif", ".tiff", ".jp2")


def may_stream(key: str) -> bool:
    return key.lower().endswith(STREAM_SUFFIXES)


@dataclass
class StreamJob:
    """A large TIFF to stream: its header, the options, and (after `run`) the result."""

    uri: str
    storage_options: dict = field(repr=False)
    name: str
    like: formats.ImageHeader  # what the header says: shape, dtype, mode, raster info
    band_mode: str = "rgb+gray"
    radiometric: str = "auto"
    compress_level: int = 1
    output: tuple = ("cog", "deflate", 512)  # raster format, compression, block size (georeferenced rasters)
    local_dir: str | None = None  # where the temporary output goes (the destination folder when local)
    # results
    tmp_path: str | None = None
    out_shape: tuple | None = None
    plan: raster.BandPlan | None = None
    windows: int = 0
    segments_decoded: int = 0
    lr_psnr: float | None = None
    seconds_stats: float = 0.0

    @property
    def shape(self) -> tuple:
        return self.like.shape

    def row_fields(self) -> dict:
        h, w, c = self.shape
        return {"width": w, "height": h, "channels": c, "dtype": str(self.like.dtype),
                "src_format": self.like.format, "src_mode": self.like.mode}

    def cleanup(self) -> None:
        if self.tmp_path and os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)
        self.tmp_path = None


def _open(uri: str, storage_options: dict):
    fs, path = store.object_at(uri, storage_options)
    return fs.open(path, "rb")


def probe(uri: str, storage_options: dict, *, threshold: int, name: str = "") -> StreamJob | None:
    """A StreamJob when the TIFF or JPEG 2000 file at `uri` has more than `threshold` pixels
    and a layout that can be read window by window; None otherwise (decoded in memory)."""
    if not threshold:
        return None

    def read_header():
        with _open(uri, storage_options) as fh:
            if not _through_gdal(fh):
                return windows.read_header(fh, threshold=threshold, name=name or uri)
        from pipeline.formats.tiff import load_gdal

        return load_gdal(name or uri).read_header(uri, storage_options, threshold=threshold, name=name or uri)

    like = store.with_retries(read_header, f"reading the header of {uri}")
    if like is None:
        return None
    return StreamJob(uri=uri, storage_options=storage_options, name=name or uri, like=like)


def _through_gdal(fh) -> bool:
    """JPEG 2000, or a TIFF with GeoTIFF/GDAL tags: read by rasterio (the header alone decides)."""
    from pipeline.formats import sniff, tiff

    kind = sniff.sniff(fh.read(132))
    fh.seek(0)
    if kind == "jp2":
        return True
    if kind != "tiff":
        return False
    try:
        with tifffile.TiffFile(fh) as tif:
            return tiff.gdal_tagged(tif.pages[0])
    except Exception:  # the in-memory decoder names what is wrong with it
        return False
    finally:
        fh.seek(0)


def _geo(job: StreamJob) -> bool:
    return job.like.raster is not None and job.like.raster.geo is not None


def window_grid(height: int, width: int, scale: int) -> tuple[int, int]:
    """(input rows per window = output tile / scale, input columns per window)."""
    tile_in = max(16, (OUTPUT_TILE // scale) // 16 * 16)
    per_row = max(1, WINDOW_INPUT // tile_in)
    return tile_in, tile_in * per_row


def _margin(upscaler, s: int) -> int:
    """Input pixels read around a window's core: half the overlap per model pass (at least 8)."""
    passes = 1 if upscaler.interpolation else model_passes(upscaler.model.scale, s)
    return max(8, math.ceil(upscaler.overlap / 2)) * passes


def window_shape(job: StreamJob, upscaler, scale: float | None) -> tuple[int, int]:
    """The input size of a typical window, margins included (what the engine tiles)."""
    s = int(upscaler.model.scale if scale is None else scale)
    h, w, _ = job.shape
    tile_in, window_w = window_grid(h, w, s)
    margin = _margin(upscaler, s)
    return min(h, tile_in + 2 * margin), min(w, window_w + 2 * margin)


def run(job: StreamJob, upscaler, scale: float | None, *, deadline: float | None = None) -> StreamJob:
    """Stream the job's image through `upscaler` into a tiled TIFF at job.tmp_path;
    `deadline` (time.monotonic) is checked by the engine in every window."""
    target = float(upscaler.model.scale if scale is None else scale)
    if not target.is_integer() or target < 1:
        raise ValueError(f"streaming a large image needs an integer scale, not {target:g}")
    s = int(target)
    h, w, bands = job.shape
    dtype = job.like.dtype
    info = job.like.raster
    with _reader(job, info) as reader:
        nodata = info.nodata if info is not None else None
        value_map = info.value_map if info is not None else None
        stats = raster.BandStats(bands, nodata, value_map)
        plan = raster.make_plan(info, dtype, bands, stats, band_mode=job.band_mode, radiometric=job.radiometric)
        if plan.radiometric == "minmax":
            started = time.perf_counter()
            reader.statistics(stats)
            job.seconds_stats = time.perf_counter() - started
            plan = raster.make_plan(info, dtype, bands, stats, band_mode=job.band_mode, radiometric=job.radiometric)
        job.plan = plan
        out_h, out_w = h * s, w * s
        tile_in, window_w = window_grid(h, w, s)
        tile_out = tile_in * s
        margin = _margin(upscaler, s)
        score = _LrScore(plan)

        def cores():
            """(output row, output column, pixels) of each window's core, in order."""
            for cy0 in range(0, h, tile_in):
                cy1 = min(h, cy0 + tile_in)
                for cx0 in range(0, w, window_w):
                    cx1 = min(w, cx0 + window_w)
                    wy0, wy1 = max(0, cy0 - margin), min(h, cy1 + margin)
                    wx0, wx1 = max(0, cx0 - margin), min(w, cx1 + margin)
                    pixels = reader.read(wy0, wy1, wx0, wx1)
                    valid = plan.valid(pixels)
                    inputs = plan.inputs(pixels, valid)
                    outputs = upscaler.upscale(inputs, s, deadline=deadline) if inputs else []
                    out = plan.restore(outputs, pixels, valid, ((wy1 - wy0) * s, (wx1 - wx0) * s))
                    del inputs, outputs
                    core = (slice(cy0 - wy0, cy1 - wy0), slice(cx0 - wx0, cx1 - wx0))
                    score.add(out, pixels, valid, core)
                    out = out[(cy0 - wy0) * s : (cy1 - wy0) * s, (cx0 - wx0) * s : (cx1 - wx0) * s]
                    job.windows += 1
                    _release_freed_memory()
                    yield cy0 * s, cx0 * s, out

        if job.local_dir:  # in the destination folder, renamed there: a plain output file's permissions
            fd, tmp = store.new_temporary(job.local_dir, ".upscaler-stream-", ".tif.tmp")
        else:  # in the temporary directory until uploaded: this user's only
            fd, tmp = tempfile.mkstemp(prefix=".upscaler-stream-", suffix=".tif.tmp")
        os.close(fd)
        job.tmp_path = tmp
        try:
            if _geo(job):
                _write_gdal(job, tmp, cores(), (out_h, out_w, bands))
            else:
                _write_tifffile(job, tmp, cores(), (out_h, out_w, bands), tile_out)
        except BaseException:
            job.cleanup()
            raise
        job.segments_decoded = reader.decoded
        job.out_shape = (out_h, out_w, bands)
        job.lr_psnr = score.value()
    return job


def _reader(job: StreamJob, info):
    """The window reader of the job's source, as a context manager: rasterio's for
    georeferenced rasters, ours (formats/windows.py) for plain TIFFs."""
    import contextlib

    @contextlib.contextmanager
    def opened():
        if _geo(job):
            from pipeline.formats import gdal

            with gdal.open_dataset(job.uri, job.storage_options) as ds:
                yield gdal.WindowReader(ds, info)
            return
        with _open(job.uri, job.storage_options) as fh, tifffile.TiffFile(fh) as tif:
            nodata = info.nodata if info is not None else None
            fill = nodata if nodata is not None and not math.isnan(nodata) else 0
            yield windows.WindowReader(tif.pages[0], fill=fill)

    return opened()


def _write_gdal(job: StreamJob, tmp: str, cores, shape: tuple) -> None:
    from pipeline.formats import gdal

    options = gdal.OutputOptions(*job.output, level=job.compress_level)
    with gdal.StreamWriter(tmp, job.like, shape, job.like.dtype, options) as writer:
        for y0, x0, out in cores:
            writer.write(y0, x0, out)


def _write_tifffile(job: StreamJob, tmp: str, cores, shape: tuple, tile_out: int) -> None:
    out_h, out_w, bands = shape
    dtype = job.like.dtype

    def tiles():
        for _y0, _x0, out in cores:
            for tx in range(0, out.shape[1], tile_out):
                tile = out[:, tx : tx + tile_out]
                yield tile[..., 0] if bands == 1 else tile

    bigtiff = out_h * out_w * bands * dtype.itemsize > BIGTIFF_BYTES
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as writer:
        writer.write(
            tiles(), shape=(out_h, out_w) if bands == 1 else (out_h, out_w, bands), dtype=dtype,
            tile=(tile_out, tile_out), compression="zlib", compressionargs={"level": job.compress_level},
            predictor=True, **_tiff_options(job.like, out_h, out_w),
        )


def _release_freed_memory() -> None:
    """Give freed heap memory back to the OS after each window (glibc keeps it, and with
    several threads allocating, fragments it: without this the RSS creeps up window by
    window although nothing is held)."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _tiff_options(like: formats.ImageHeader, out_h: int, out_w: int) -> dict:
    if like.raster is not None:
        return formats.raster_tiff_options(like, out_h, out_w)
    bands = like.shape[2]
    options = {"photometric": "rgb" if bands >= 3 else "minisblack", "metadata": None,
               "planarconfig": "contig" if bands > 1 else None}
    if bands in (2, 4):
        options["extrasamples"] = [like.info.get("extrasample", tifffile.EXTRASAMPLE.UNASSALPHA)]
    dpi = like.info.get("dpi")
    if dpi:
        options.update(resolution=(dpi[0] * out_w / like.shape[1], dpi[1] * out_h / like.shape[0]),
                       resolutionunit="inch")
    if like.icc_profile and like.icc_profile[16:20] == (b"GRAY" if bands <= 2 else b"RGB "):
        options["iccprofile"] = like.icc_profile
    return options


class _LrScore:
    """lr_psnr accumulated over windows: each window's output (margins included, so the
    core sees the same neighbours as in the whole image) downscaled with MATLAB bicubic,
    compared with the window's core on valid pixels, in the native bit depth."""

    def __init__(self, plan: raster.BandPlan):
        self.plan = plan
        if plan.alpha_resample == "nearest":  # rasters: data bands, the plan's native peak
            self.bands, self.peak = plan.data_bands, plan.psnr_peak()
        else:  # photos: all channels, the type's maximum or the data range, as metrics.lr_psnr
            self.bands = None
            self.peak = float(np.iinfo(plan.dtype).max) if np.issubdtype(plan.dtype, np.integer) else None
        self.sse, self.count = 0.0, 0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, out: np.ndarray, pixels: np.ndarray, valid: np.ndarray | None, core) -> None:
        from pipeline.metrics import lr_window_errors

        sse, count, lo, hi = lr_window_errors(out, pixels, valid, core, self.bands)
        self.sse += sse
        self.count += count
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def value(self) -> float | None:
        if not self.count:
            return None
        peak = self.peak
        if peak is None:  # float data: its range when beyond 1, as metrics.lr_psnr does
            peak = ((self.hi - self.lo) or 1.0) if self.hi > 1.0 else 1.0
        mse = self.sse / self.count
        return math.inf if mse == 0 else float(10 * np.log10(peak**2 / mse))
