"""One image's journey, and the in-process (`--executor local`) run loop.

    list (storage) -> read + decode (imageio) -> upscale (engine: tile, infer,
    stitch) -> encode + write atomically (imageio, storage) -> metrics -> row
    (manifest)

`read_stage` and `finish_stage` are the per-image steps; `infer_stage`
upscales a group of decoded images together so tiles of several images share
a forward pass. `run_local` pipelines them: reads and writes run in threads
while the main thread keeps the model busy. Any failure of one image becomes
its `failed` row; the others go on.

Rasters (GeoTIFF, multi-band, int16, DICOM) get a `raster.BandPlan` in
`read_stage` (band mode, radiometric scaling, nodata mask and fill): the engine
sees float planes in [0, 1], and `infer_stage` maps its outputs back. A TIFF
over `stream_threshold` pixels is not decoded in `read_stage`: `infer_stage`
streams it window by window (streaming.py) into a local temporary file, and
`finish_stage` moves that to the destination. Everything a stage needs travels
on the `ImageWork`, so the Ray actors, which call the same three stages, do
the same.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import posixpath
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

from pipeline import __version__, formats, metrics, raster, store
from pipeline.stages import stream as streaming
from pipeline.store import manifest
from pipeline.store import spool
from pipeline.run import resume as plan_mod
from pipeline.inference.engine import Upscaler
from pipeline.models import LoadedModel, default_model, load_model



@dataclass
class RunConfig:
    src: str
    dst: str
    model: str | None = None  # None: the bundled model for `scale` (pipeline.models.default_model)
    scale: float | None = None
    tile: int | None = None  # None = auto from the memory budget, 0 = whole image
    overlap: int | None = None
    precision: str = "auto"
    format: str | None = None
    quality: int = 95
    compress_level: int = 1  # zlib level for PNG/TIFF (see formats.encode_image)
    reference: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_pixels: int | None = formats.DEFAULT_MAX_PIXELS
    batch_images: int = 4
    device: str = "auto"
    run_id: str | None = None
    force: bool = False  # reprocess images an earlier run already did
    from_list: str | None = None  # text or Parquet list of URLs/keys under src
    include_quarantined: bool = False  # retry images that failed deterministically in earlier runs
    limit: int | None = None  # pilot runs: the first N images to do ...
    sample: int | None = None  # ... or a random N of them
    storage_options: dict = field(default_factory=dict, repr=False)
    time_limit: float | None = None  # seconds per image, checked between tiles
    band_mode: str = "rgb+gray"  # rasters: "rgb+gray" | "each" (raster.py)
    radiometric: str = "auto"  # rasters: "auto" | "minmax" | "dtype" (raster.py)
    stream_threshold: int = streaming.DEFAULT_STREAM_THRESHOLD  # TIFFs above this many pixels stream; 0: never
    storage_failures: int = 5  # images in a row failing on storage before the rest are not attempted; 0: never

    def __post_init__(self):
        if not self.model:
            self.model = default_model(self.scale)
        if self.band_mode not in raster.BAND_MODES:
            raise ValueError(f"band mode must be one of {', '.join(raster.BAND_MODES)}, not {self.band_mode!r}")
        if self.radiometric not in raster.RADIOMETRIC_MODES:
            raise ValueError(f"radiometric scaling must be one of {', '.join(raster.RADIOMETRIC_MODES)}, "
                             f"not {self.radiometric!r}")
        if self.stream_threshold is None or self.stream_threshold < 0:
            raise ValueError(f"stream threshold must be a pixel count >= 0, not {self.stream_threshold!r}")

    def public(self) -> dict:
        """The configuration as recorded: storage options (credentials) left out."""
        record = asdict(self)
        record.pop("storage_options")
        record["storage_option_keys"] = sorted(self.storage_options)
        return record


@dataclass
class ImageWork:
    """One image in flight: its source, its row, and the pixels between stages."""

    source: store.Source
    row: dict
    started: float
    decoded: formats.DecodedImage | None = None
    output: np.ndarray | None = None
    plan: raster.BandPlan | None = None  # rasters: how bands reach the model
    inputs: list | None = None  # rasters: the model inputs (float32 in [0, 1])
    valid: np.ndarray | None = None  # rasters with nodata: H x W validity mask
    stream: streaming.StreamJob | None = None  # large TIFFs: streamed in infer_stage
    uid_seed: str = ""  # DICOM: derived UIDs are a function of the source UIDs and this


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _fail(work: ImageWork, error: BaseException) -> None:
    work.row.update(status="failed", error=str(error) or repr(error), error_type=type(error).__name__)
    work.decoded = work.output = work.inputs = work.valid = None
    if work.stream is not None:
        work.stream.cleanup()
        work.stream = None


def base_row(config: RunConfig, run_id: str, model: LoadedModel, upscaler: Upscaler, worker: str,
             config_key: str) -> dict:
    info = upscaler.info
    scale = float(config.scale) if config.scale else float(model.scale)
    return {
        "run_id": run_id,
        "config_key": config_key,
        "attempt": 1,
        "model": model.name,
        "model_sha256": model.sha256,
        "scale": scale,
        "tile": str(info["tile"]),
        "overlap": info["overlap"],
        "precision": info["precision"],
        "device": info["device"],
        "worker": worker,
    }


class Circuit:
    """Stops hammering storage that is down. After `threshold` images in a row
    fail with StorageUnavailable (each after up to a minute of retries), the images
    left are not attempted: they get a failed row at once, which `upscaler rerun`
    redoes once storage is back. An image already in flight that then succeeds
    closes it again (storage is back)."""

    def __init__(self, threshold: int):
        self.threshold, self.streak, self.last = threshold, 0, ""

    def record(self, row: dict) -> None:
        if row["status"] == "ok":
            self.streak = 0
        elif row.get("error_type") == "StorageUnavailable" and not row["error"].startswith("not attempted"):
            self.streak, self.last = self.streak + 1, row["error"]

    @property
    def open(self) -> bool:
        return 0 < self.threshold <= self.streak

    def skip(self, source: store.Source, template: dict) -> ImageWork:
        """The failed work item of an image not attempted while open."""
        work = ImageWork(source, dict(template, image_id=source.key, src_uri=source.uri,
                                      source_version=source.version, started_at=_now()), time.perf_counter())
        _fail(work, store.StorageUnavailable(
            f"not attempted: storage unreachable ({self.streak} images in a row failed on it; last: {self.last})"))
        return work


def read_stage(source: store.Source, config: RunConfig, template: dict) -> ImageWork:
    """Read and decode one image; failures are recorded, not raised. Rasters also get
    their band plan and model inputs here (in the reader thread); a TIFF over the
    stream threshold only has its header read."""
    work = ImageWork(source, dict(template, image_id=source.key, src_uri=source.uri,
                                  source_version=source.version, started_at=_now()), time.perf_counter())
    work.uid_seed = template.get("config_key") or ""
    try:
        store.safe_key(source.key)
        if config.stream_threshold and streaming.may_stream(source.key):
            job = streaming.probe(source.uri, config.storage_options, threshold=config.stream_threshold,
                                  name=source.uri)
            if job is not None:
                job.band_mode, job.radiometric = config.band_mode, config.radiometric
                job.compress_level = config.compress_level
                job.local_dir = _local_output_dir(config, source.key)
                work.stream = job
                work.row.update(job.row_fields())
                work.row["seconds_read"] = time.perf_counter() - work.started
                return work
        data = store.read_bytes(source.uri, config.storage_options)
        decoded = formats.decode_image(data, name=source.uri, max_pixels=config.max_pixels)
        del data
        h, w, c = decoded.pixels.shape
        work.row.update(width=w, height=h, channels=c, dtype=str(decoded.pixels.dtype),
                        src_format=decoded.format, src_mode=decoded.mode)
        if decoded.raster is not None:
            work.plan = raster.plan_for(decoded.pixels, decoded.raster, band_mode=config.band_mode,
                                        radiometric=config.radiometric)
            work.valid = work.plan.valid(decoded.pixels)
            work.inputs = work.plan.inputs(decoded.pixels, work.valid)
        work.decoded = decoded
    except Exception as error:  # one bad file must not stop the run
        _fail(work, error)
    work.row["seconds_read"] = time.perf_counter() - work.started
    return work


def _local_output_dir(config: RunConfig, key: str) -> str | None:
    """Where a streamed output is written first: the destination folder when the
    destination is local (so a rename finishes it), else the temporary directory."""
    fs, root = store.open_location(config.dst, config.storage_options)
    if "file" not in store._protocols(fs):
        return None
    folder = posixpath.dirname(posixpath.join(root, store.safe_key(key)))
    os.makedirs(folder, exist_ok=True)
    return folder


def infer_stage(group: list[ImageWork], upscaler: Upscaler, scale: float | None,
                time_limit: float | None = None) -> None:
    """Upscale a group together; if the group fails, retry one by one so only
    the image at fault is marked failed. Streamed images go window by window.
    `time_limit` is seconds per image, checked between tiles (a single forward
    pass cannot be interrupted)."""
    for w in group:
        if w.stream is not None:
            _stream(w, upscaler, scale)
    live = [w for w in group if w.decoded is not None]
    if not live:
        return
    started = time.perf_counter()
    try:
        inputs, spans = [], []
        for w in live:
            ins = w.inputs if w.plan is not None else [w.decoded.pixels]
            spans.append((len(inputs), len(ins)))
            inputs.extend(ins)
        upscaler.deadline = time.monotonic() + time_limit * len(live) if time_limit else None
        outputs = upscaler.upscale(inputs, scale) if inputs else []
    except Exception:
        if len(live) == 1:
            _fail(live[0], sys.exc_info()[1])
            live[0].row["seconds_infer"] = time.perf_counter() - started
            return
        for w in live:
            infer_stage([w], upscaler, scale, time_limit)
        return
    finally:
        upscaler.deadline = None
    for w, (start, count) in zip(live, spans):
        try:
            if w.plan is not None:
                h, wd = w.decoded.pixels.shape[:2]
                w.output = w.plan.restore(outputs[start : start + count], w.decoded.pixels, w.valid,
                                          upscaler.output_size(h, wd, scale))
                w.inputs = None
            else:
                w.output = outputs[start]
        except Exception as error:
            _fail(w, error)
    elapsed = time.perf_counter() - started
    total = sum(w.decoded.pixels.shape[0] * w.decoded.pixels.shape[1] for w in live)
    for w in live:
        share = w.decoded.pixels.shape[0] * w.decoded.pixels.shape[1] / total
        w.row["seconds_infer"] = elapsed * share


def _stream(work: ImageWork, upscaler: Upscaler, scale: float | None) -> None:
    started = time.perf_counter()
    try:
        streaming.run(work.stream, upscaler, scale)
    except Exception as error:
        _fail(work, error)
    work.row["seconds_infer"] = time.perf_counter() - started


def finish_stage(work: ImageWork, config: RunConfig, dst_fs, dst_root: str, reference=None) -> dict:
    """Encode, write atomically, score; returns the finished manifest row."""
    started = time.perf_counter()
    row = work.row
    if work.stream is not None:
        _finish_stream(work, config, dst_fs, dst_root, started)
    elif work.output is not None:
        try:
            decoded, out = work.decoded, work.output
            fmt, ext = formats.output_format(decoded.format, config.format)
            dpi_scale = out.shape[1] / decoded.pixels.shape[1]
            derivation = None
            if decoded.format == "dicom":
                derivation = {"description": _derivation_text(row, out, decoded), "uid_seed": work.uid_seed}
            data = formats.encode_image(out, decoded, fmt, quality=config.quality, dpi_scale=dpi_scale,
                                        compress_level=config.compress_level, derivation=derivation)
            path = posixpath.join(dst_root, store.output_key(work.source.key, ext))
            store.write_atomic(dst_fs, path, data)
            row.update(status="ok", dst_uri=store.full_uri(dst_fs, path), out_format=fmt,
                       out_height=out.shape[0], out_width=out.shape[1])
            row["seconds_write"] = time.perf_counter() - started
            row.update(raster_columns(decoded, work.plan, out.shape, work.uid_seed))
            row.update(score(decoded.pixels, out, work.source.key, config, reference,
                             plan=work.plan, valid=work.valid))
        except Exception as error:
            _fail(work, error)
    row["finished_at"] = _now()
    row["seconds_total"] = time.perf_counter() - work.started
    work.decoded = work.output = work.valid = None
    return row


def _finish_stream(work: ImageWork, config: RunConfig, dst_fs, dst_root: str, started: float) -> None:
    job, row = work.stream, work.row
    try:
        fmt, ext = formats.output_format("tiff", config.format)
        if fmt != "tiff":
            raise formats.ImageEncodeError(f"{work.source.uri} is {job.shape[1]} x {job.shape[0]} pixels and is "
                                           f"streamed into a tiled TIFF; --format {fmt} is not possible for it")
        path = posixpath.join(dst_root, store.output_key(work.source.key, ext))
        _move_into_place(dst_fs, path, job)
        out_h, out_w, _ = job.out_shape
        row.update(status="ok", dst_uri=store.full_uri(dst_fs, path), out_format="tiff",
                   out_height=out_h, out_width=out_w, stream_windows=job.windows, lr_psnr=job.lr_psnr)
        row["seconds_write"] = time.perf_counter() - started
        row.update(raster_columns(job.like, job.plan if job.like.raster is not None else None, job.out_shape, ""))
        if config.reference:
            row["metrics_note"] = "reference metrics are not computed for streamed images"
    except Exception as error:
        _fail(work, error)
    finally:
        if work.stream is not None:
            work.stream.cleanup()
        work.stream = None


def _move_into_place(dst_fs, path: str, job: streaming.StreamJob) -> None:
    """The streamed file under its final name, appearing only when complete: a rename
    on a local destination, one upload (a PUT or multipart upload) otherwise."""
    if "file" in store._protocols(dst_fs) and job.local_dir is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(job.tmp_path, path)
        job.tmp_path = None
        return
    store.with_retries(lambda: dst_fs.put_file(job.tmp_path, path), f"writing {path}")


def _derivation_text(row: dict, out: np.ndarray, decoded: formats.DecodedImage) -> str:
    factor = out.shape[1] / decoded.pixels.shape[1]
    return (f"Super-resolution x{factor:g} by upscaler {__version__}, model {row.get('model')} "
            f"(sha256 {str(row.get('model_sha256') or 'none')[:16]}); in-plane pixel spacing divided by {factor:g}")


def raster_columns(decoded: formats.DecodedImage, plan: raster.BandPlan | None, out_shape: tuple,
                   uid_seed: str) -> dict:
    """Manifest columns of a raster (null for photos): CRS, geotransforms, nodata, bands,
    radiometric scaling; for DICOM the UIDs and spacings (and nothing about the patient)."""
    info = decoded.raster
    if info is None:
        return {}
    from pipeline.formats import geotiff as geo

    columns = {"nodata": geo.nodata_text(info.nodata)}
    if plan is not None:
        columns.update(bands=plan.bands_json(), radiometric=plan.radiometric_json())
    if info.geo is not None:
        in_h, in_w = decoded.pixels.shape[:2]
        out_h, out_w = out_shape[:2]
        columns.update(crs=info.geo.crs(), transform_in=geo.describe_transform(info.geo),
                       transform_out=geo.describe_transform(info.geo.scaled(out_w / in_w, out_h / in_h)))
    if decoded.format == "dicom":
        from pipeline.formats import dicom

        columns.update(dicom.describe(decoded, out_shape, uid_seed))
    return columns


def score(lr: np.ndarray, sr: np.ndarray, key: str, config: RunConfig, reference, *,
          plan: raster.BandPlan | None = None, valid: np.ndarray | None = None) -> dict:
    """lr_psnr always (native bit depth; rasters: valid pixels and data bands only);
    with a reference image PSNR/SSIM (Y channel for RGB photos, all data bands for
    rasters, shave = scale), per-band PSNR, SAM (degrees, two bands or more) and LPIPS
    (photos). A metric problem is a note, not a failure."""
    is_raster = plan is not None and plan.alpha_resample == "nearest"
    if is_raster:
        peak = plan.psnr_peak()
        value = metrics.lr_psnr(sr, lr, valid=valid, data_range=peak, bands=plan.data_bands)
        values: dict = {"lr_psnr": None if math.isnan(value) else value}  # NaN: no valid pixel
    else:
        values = {"lr_psnr": metrics.lr_psnr(sr, lr)}
    if reference is None:
        return values
    notes = []
    try:
        hr = reference.find(key, sr.shape)
        if hr is None:
            return {**values, "metrics_note": "no reference image found"}
        shave = math.ceil(sr.shape[1] / lr.shape[1])
        if is_raster:
            bands = plan.data_bands
            a, b = sr[..., bands], hr[..., bands]
            keep = None
            if valid is not None:
                keep = valid[raster.nearest_rows(lr.shape[0], sr.shape[0])][:, raster.nearest_rows(lr.shape[1], sr.shape[1])]
            per_band = metrics.psnr_bands(a, b, data_range=peak, shave=shave, valid=keep)
            values["psnr_bands"] = json.dumps(per_band)
            values["psnr"] = _psnr_all(a, b, peak, shave, keep)
            if keep is None and min(a.shape[:2]) - 2 * shave >= 11:
                values["ssim"] = metrics.ssim(a.astype(np.float64), b.astype(np.float64), data_range=peak,
                                              shave=shave)
            if len(bands) >= 2:
                values["sam"] = _sam(a, b, shave, keep)
            notes.append("lpips: not computed for rasters")
        else:
            y = sr.shape[2] in (3, 4)
            a, b = (sr[..., :3], hr[..., :3]) if y else (sr, hr)
            values["psnr"] = metrics.psnr(a, b, y_channel=y, shave=shave)
            values["ssim"] = metrics.ssim(a, b, y_channel=y, shave=shave)
            peak = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
            values["psnr_bands"] = json.dumps(metrics.psnr_bands(a, b, data_range=peak, shave=shave))
            if a.shape[2] >= 2:
                values["sam"] = _sam(a, b, shave, None)
            value, reason = metrics.lpips_value(a, b)
            values["lpips"] = value
            if reason:
                notes.append(f"lpips: {reason}")
    except Exception as error:
        notes.append(f"reference metrics failed: {error}")
    if notes:
        values["metrics_note"] = "; ".join(notes)
    return values


def _crop_mask(shape, shave: int, keep):
    mask = np.ones(shape[:2], bool) if keep is None else keep.copy()
    if shave:
        mask[:shave], mask[-shave:], mask[:, :shave], mask[:, -shave:] = False, False, False, False
    return mask


def _psnr_all(a, b, peak, shave, keep) -> float:
    mask = _crop_mask(a.shape, shave, keep)
    diff = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    mse = float(np.mean(diff * diff)) if diff.size else math.nan
    return math.inf if mse == 0 else float(10 * np.log10(peak**2 / mse))


def _sam(a, b, shave, keep) -> float:
    mask = _crop_mask(a.shape, shave, keep)
    return metrics.sam_degrees(a[mask][:, None, :], b[mask][:, None, :])


class Reference:
    """High-resolution references for PSNR/SSIM: same relative key under a root,
    or the same stem with any image extension, with an 'x4'-style suffix removed."""

    def __init__(self, root: str, storage_options: dict | None = None):
        self.fs, self.root = store.open_location(root, storage_options)
        self.options = storage_options
        self.index: dict[str, str] = {}
        for path in self.fs.find(self.root):
            stem = posixpath.splitext(posixpath.relpath(path, self.root))[0]
            self.index.setdefault(stem, path)

    def find(self, key: str, shape: tuple) -> np.ndarray | None:
        import re

        stem = posixpath.splitext(key)[0]
        for candidate in (stem, re.sub(r"[_-]?x\d+$", "", stem, flags=re.IGNORECASE)):
            if candidate in self.index:
                path = self.index[candidate]
                hr = formats.decode_image(self.fs.cat_file(path), name=path).pixels
                h, w = shape[:2]
                if hr.shape[0] < h or hr.shape[1] < w or hr.shape[2] != shape[2]:
                    raise ValueError(f"reference {path} is {hr.shape}, output is {tuple(shape)}")
                return hr[:h, :w]  # HR larger than a multiple of the scale: crop, as the protocol does
        return None


@dataclass
class Prepared:
    """Everything a run needs before the first image: shared by both executors."""

    config: RunConfig
    run_id: str
    started_at: dt.datetime
    model: LoadedModel
    config_key: str
    dst_fs: object
    dst_root: str
    sources: Iterator[store.Source]  # the images to do, streamed
    plan: plan_mod.Plan


def prepare(config: RunConfig, model: LoadedModel | None = None) -> Prepared:
    """Load the model (for its sha256), read earlier runs, start the filtered listing."""
    run_id = config.run_id or store.new_run_id()
    started_at = _now()
    model = model or load_model(config.model, scale=_model_scale_hint(config), storage_options=config.storage_options)
    key = plan_mod.config_key(model.sha256 or model.name, config)
    dst_fs, dst_root = store.open_location(config.dst, config.storage_options)
    dst_fs.invalidate_cache()  # other processes (workers, earlier runs) changed it
    spool.upload(dst_fs, dst_root, spool.dst_url(dst_fs, dst_root))  # rows an earlier run could not write
    _remove_finished_plans(dst_fs, dst_root)
    prior = plan_mod.PriorIndex.load(dst_fs, dst_root, key) if not config.force else plan_mod.PriorIndex({})
    if config.from_list:
        listing = plan_mod.sources_from_list(config.from_list, config.src, config.storage_options)
    else:
        listing = store.list_sources(config.src, include=config.include, exclude=config.exclude,
                                       storage_options=config.storage_options)
    counts = plan_mod.Plan()
    sources = plan_mod.to_do(listing, prior, dst_fs, config.force, counts,
                             include_quarantined=config.include_quarantined, limit=config.limit, sample=config.sample)
    return Prepared(config, run_id, started_at, model, key, dst_fs, dst_root, sources, counts)


def _remove_finished_plans(dst_fs, dst_root: str) -> None:
    """Plan chunks (DST/_plans/<run_id>/) of finished runs that could not remove
    them (storage went down at the end). A run's plan is finished once its record exists;
    plans of runs still going are left alone."""
    plans = posixpath.join(dst_root, "_plans")
    if not dst_fs.exists(plans):
        return
    for folder in dst_fs.ls(plans, detail=False):
        record = posixpath.join(manifest.manifest_dir(dst_root), "_runs", f"{posixpath.basename(folder)}.json")
        if dst_fs.exists(record):
            dst_fs.rm(folder, recursive=True)


class RowSink:
    """Collects finished rows and flushes them to the manifest in parts, so a
    run killed midway still leaves the rows of what it finished."""

    def __init__(self, prepared: Prepared, worker: str, flush_every: int = 1000, progress: bool = False):
        self.p, self.worker, self.flush_every = prepared, worker, flush_every
        self.pending: list[dict] = []
        self.parts = 0
        self.counts = {"ok": 0, "failed": 0}
        self.megapixels = [0.0, 0.0]
        self.device_seconds = 0.0
        self.failures: list[dict] = []
        self.bar = _progress_bar(progress)
        self.circuit = Circuit(prepared.config.storage_failures)
        self.spooled: list[str] = []  # manifest files kept locally: DST was unreachable
        self.storage_error = ""

    def add(self, row: dict) -> None:
        self.circuit.record(row)
        self.pending.append(row)
        self.counts["ok" if row["status"] == "ok" else "failed"] += 1
        self.megapixels[0] += (row.get("width") or 0) * (row.get("height") or 0) / 1e6
        self.megapixels[1] += (row.get("out_width") or 0) * (row.get("out_height") or 0) / 1e6
        self.device_seconds += row.get("seconds_infer") or 0.0
        if row["status"] != "ok" and len(self.failures) < 20:
            self.failures.append({"image_id": row["image_id"], "error_type": row["error_type"], "error": row["error"]})
        self.bar(row, self.counts["failed"])
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            name = f"{self.worker}-{self.parts:05d}"
            self.write(*manifest.rows_part(self.p.run_id, name, self.pending))
            self.parts += 1
            self.pending = []

    def write(self, relative: str, data: bytes) -> None:
        """A manifest file to DST, or to the local spool when DST stays unreachable
        (once it was, the rest of the run goes to the spool too: rows stay in order)."""
        if not self.storage_error:
            try:
                manifest.write_file(self.p.dst_fs, self.p.dst_root, relative, data)
                return
            except store.StorageUnavailable as error:
                self.storage_error = str(error)
        url = spool.dst_url(self.p.dst_fs, self.p.dst_root)
        spool.keep(url, relative, data)
        self.spooled.append(relative)


def run_local(config: RunConfig, *, progress: bool = False) -> dict:
    """Upscale everything under config.src in this process; returns the summary."""
    p = prepare(config)
    upscaler = Upscaler(p.model, device=config.device, precision=config.precision,
                        tile=config.tile, overlap=config.overlap)
    reference = Reference(config.reference, config.storage_options) if config.reference else None
    template = base_row(config, p.run_id, p.model, upscaler, worker="local-0", config_key=p.config_key)
    sink = RowSink(p, "local-0", progress=progress)
    with ThreadPoolExecutor(2, thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(2, thread_name_prefix="write") as writers:
        reading: deque[Future] = deque()
        writing: deque[Future] = deque()
        sources_left = True

        def refill():
            nonlocal sources_left
            while sources_left and len(reading) < 2 * config.batch_images:
                source = next(p.sources, None)
                if source is None:
                    sources_left = False
                    return
                if sink.circuit.open:
                    reading.append(_done(sink.circuit.skip(source, template)))
                else:
                    reading.append(readers.submit(read_stage, source, config, template))

        refill()
        while reading:
            group = []
            while reading and len(group) < config.batch_images:
                group.append(reading.popleft().result())
                refill()
            infer_stage(group, upscaler, config.scale, config.time_limit)
            for work in group:
                writing.append(writers.submit(finish_stage, work, config, p.dst_fs, p.dst_root, reference))
            while writing and (writing[0].done() or len(writing) > 2 * config.batch_images):
                sink.add(writing.popleft().result())
        while writing:
            sink.add(writing.popleft().result())
    return finish_run(p, sink, executor="local", engine=upscaler.info)


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def finish_run(p: Prepared, sink: RowSink, *, executor: str, engine: dict, extra: dict | None = None) -> dict:
    """Flush the last rows, then write the run record (the commit marker); return the summary."""
    sink.flush()
    finished_at = _now()
    summary = {
        "run_id": p.run_id,
        "ok": sink.counts["ok"],
        "failed": sink.counts["failed"],
        "skipped": p.plan.skipped,
        "quarantined": p.plan.quarantined,
        "total": sink.counts["ok"] + sink.counts["failed"] + p.plan.skipped + p.plan.quarantined,
        "seconds": (finished_at - p.started_at).total_seconds(),
        "megapixels_in": round(sink.megapixels[0], 6),
        "megapixels_out": round(sink.megapixels[1], 6),
        "device_seconds": round(sink.device_seconds, 3),
        "manifest": store.full_uri(p.dst_fs, manifest.manifest_dir(p.dst_root)),
        "failures": sink.failures,
    }
    model = p.model
    record = {
        **{k: v for k, v in summary.items() if k != "failures"},
        "config": p.config.public(),
        "config_key": p.config_key,
        "executor": executor,
        "model": {"name": model.name, "arch": model.arch, "scale": model.scale, "sha256": model.sha256,
                  "params": model.params, "source": model.source},
        "engine": engine,
        "started_at": p.started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "versions": _versions(),
        **(extra or {}),
    }
    sink.write(*manifest.run_record(p.run_id, record))
    if sink.storage_error:
        summary["storage_error"] = sink.storage_error
        summary["spooled"] = {"files": len(sink.spooled),
                              "folder": str(spool.spool_dir(spool.dst_url(p.dst_fs, p.dst_root)))}
    return summary


def _model_scale_hint(config: RunConfig) -> int:
    """Scale-free models (bicubic) take the requested scale."""
    return max(1, round(config.scale)) if config.scale else 4


def _progress_bar(enabled: bool):
    """A live bar: images done, output megapixels/s, failures."""
    if not enabled:
        return lambda row, failed: None
    from tqdm import tqdm

    bar = tqdm(unit="img", file=sys.stderr, dynamic_ncols=True)
    started, out_mp = time.perf_counter(), [0.0]

    def update(row, failed):
        out_mp[0] += (row.get("out_width") or 0) * (row.get("out_height") or 0) / 1e6
        bar.set_postfix({"Mpx/s": f"{out_mp[0] / max(1e-9, time.perf_counter() - started):.2f}", "failed": failed},
                        refresh=False)
        bar.update(1)

    return update


def _versions() -> dict:
    import fsspec
    import PIL
    import pyarrow
    import torch

    return {"pipeline": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "pillow": PIL.__version__, "pyarrow": pyarrow.__version__, "fsspec": fsspec.__version__,
            "numpy": np.__version__}
