"""One image's journey, and the in-process (`--executor local`) run loop.

    list (storage) -> read + decode (imageio) -> upscale (engine: tile, infer,
    stitch) -> encode + write atomically (imageio, storage) -> metrics -> row
    (manifest)

`read_stage` and `finish_stage` are the per-image steps; `infer_stage`
upscales a group of decoded images together so tiles of several images share
a forward pass. `run_local` pipelines them: reads and writes run in threads
while the main thread keeps the model busy. Any failure of one image becomes
its `failed` row; the others go on.
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import posixpath
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline import __version__, imageio, manifest, metrics, storage
from pipeline.engine import Upscaler
from pipeline.models import LoadedModel, load_model

DEFAULT_MODEL = "bicubic"


@dataclass
class RunConfig:
    src: str
    dst: str
    model: str = DEFAULT_MODEL
    scale: float | None = None
    tile: int | None = None  # None = auto from the memory budget, 0 = whole image
    overlap: int | None = None
    precision: str = "auto"
    format: str | None = None
    quality: int = 95
    compress_level: int = 1  # zlib level for PNG/TIFF (see imageio.encode_image)
    reference: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_pixels: int | None = imageio.DEFAULT_MAX_PIXELS
    batch_images: int = 4
    device: str = "auto"
    run_id: str | None = None
    storage_options: dict = field(default_factory=dict, repr=False)

    def public(self) -> dict:
        """The configuration as recorded: storage options (credentials) left out."""
        record = asdict(self)
        record.pop("storage_options")
        record["storage_option_keys"] = sorted(self.storage_options)
        return record


@dataclass
class ImageWork:
    """One image in flight: its source, its row, and the pixels between stages."""

    source: storage.Source
    row: dict
    started: float
    decoded: imageio.DecodedImage | None = None
    output: np.ndarray | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _fail(work: ImageWork, error: BaseException) -> None:
    work.row.update(status="failed", error=str(error) or repr(error), error_type=type(error).__name__)
    work.decoded = work.output = None


def base_row(config: RunConfig, run_id: str, model: LoadedModel, upscaler: Upscaler, worker: str) -> dict:
    info = upscaler.info
    scale = float(config.scale) if config.scale else float(model.scale)
    return {
        "run_id": run_id,
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


def read_stage(source: storage.Source, config: RunConfig, template: dict) -> ImageWork:
    """Read and decode one image; failures are recorded, not raised."""
    work = ImageWork(source, dict(template, image_id=source.key, src_uri=source.uri,
                                  source_version=source.version, started_at=_now()), time.perf_counter())
    try:
        storage.safe_key(source.key)
        data = storage.read_bytes(source.uri, config.storage_options)
        decoded = imageio.decode_image(data, name=source.uri, max_pixels=config.max_pixels)
        h, w, c = decoded.pixels.shape
        work.row.update(width=w, height=h, channels=c, dtype=str(decoded.pixels.dtype),
                        src_format=decoded.format, src_mode=decoded.mode)
        work.decoded = decoded
    except Exception as error:  # one bad file must not stop the run
        _fail(work, error)
    work.row["seconds_read"] = time.perf_counter() - work.started
    return work


def infer_stage(group: list[ImageWork], upscaler: Upscaler, scale: float | None) -> None:
    """Upscale a group together; if the group fails, retry one by one so only
    the image at fault is marked failed."""
    live = [w for w in group if w.decoded is not None]
    if not live:
        return
    started = time.perf_counter()
    try:
        outputs = upscaler.upscale([w.decoded.pixels for w in live], scale)
    except Exception:
        if len(live) == 1:
            _fail(live[0], sys.exc_info()[1])
            live[0].row["seconds_infer"] = time.perf_counter() - started
            return
        for w in live:
            infer_stage([w], upscaler, scale)
        return
    elapsed = time.perf_counter() - started
    total = sum(w.decoded.pixels.shape[0] * w.decoded.pixels.shape[1] for w in live)
    for w, out in zip(live, outputs):
        w.output = out
        share = w.decoded.pixels.shape[0] * w.decoded.pixels.shape[1] / total
        w.row["seconds_infer"] = elapsed * share


def finish_stage(work: ImageWork, config: RunConfig, dst_fs, dst_root: str, reference=None) -> dict:
    """Encode, write atomically, score; returns the finished manifest row."""
    started = time.perf_counter()
    row = work.row
    if work.output is not None:
        try:
            decoded, out = work.decoded, work.output
            fmt, ext = imageio.output_format(decoded.format, config.format)
            dpi_scale = out.shape[1] / decoded.pixels.shape[1]
            data = imageio.encode_image(out, decoded, fmt, quality=config.quality, dpi_scale=dpi_scale,
                                        compress_level=config.compress_level)
            path = posixpath.join(dst_root, storage.output_key(work.source.key, ext))
            storage.write_atomic(dst_fs, path, data)
            row.update(status="ok", dst_uri=storage.full_uri(dst_fs, path), out_format=fmt,
                       out_height=out.shape[0], out_width=out.shape[1])
            row["seconds_write"] = time.perf_counter() - started
            row.update(score(decoded.pixels, out, work.source.key, config, reference))
        except Exception as error:
            _fail(work, error)
    row["finished_at"] = _now()
    row["seconds_total"] = time.perf_counter() - work.started
    work.decoded = work.output = None
    return row


def score(lr: np.ndarray, sr: np.ndarray, key: str, config: RunConfig, reference) -> dict:
    """lr_psnr always; PSNR/SSIM (Y channel for RGB, shave = scale) and LPIPS
    when a reference image exists. A metric problem is a note, not a failure."""
    values: dict = {"lr_psnr": metrics.lr_psnr(sr, lr)}
    if reference is None:
        return values
    notes = []
    try:
        hr = reference.find(key, sr.shape)
        if hr is None:
            return {**values, "metrics_note": "no reference image found"}
        shave = math.ceil(sr.shape[1] / lr.shape[1])
        y = sr.shape[2] in (3, 4)
        a, b = (sr[..., :3], hr[..., :3]) if y else (sr, hr)
        values["psnr"] = metrics.psnr(a, b, y_channel=y, shave=shave)
        values["ssim"] = metrics.ssim(a, b, y_channel=y, shave=shave)
        value, reason = metrics.lpips_value(a, b)
        values["lpips"] = value
        if reason:
            notes.append(f"lpips: {reason}")
    except Exception as error:
        notes.append(f"reference metrics failed: {error}")
    if notes:
        values["metrics_note"] = "; ".join(notes)
    return values


class Reference:
    """High-resolution references for PSNR/SSIM: same relative key under a root,
    or the same stem with any image extension, with an 'x4'-style suffix removed."""

    def __init__(self, root: str, storage_options: dict | None = None):
        self.fs, self.root = storage.open_location(root, storage_options)
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
                hr = imageio.decode_image(self.fs.cat_file(path), name=path).pixels
                h, w = shape[:2]
                if hr.shape[0] < h or hr.shape[1] < w or hr.shape[2] != shape[2]:
                    raise ValueError(f"reference {path} is {hr.shape}, output is {tuple(shape)}")
                return hr[:h, :w]  # HR larger than a multiple of the scale: crop, as the protocol does
        return None


def run_local(config: RunConfig, *, progress: bool = False) -> dict:
    """Upscale everything under config.src in this process; returns the summary."""
    run_id = config.run_id or storage.new_run_id()
    started_at = _now()
    model = load_model(config.model, scale=_model_scale_hint(config), storage_options=config.storage_options)
    upscaler = Upscaler(model, device=config.device, precision=config.precision,
                        tile=config.tile, overlap=config.overlap)
    dst_fs, dst_root = storage.open_location(config.dst, config.storage_options)
    reference = Reference(config.reference, config.storage_options) if config.reference else None
    template = base_row(config, run_id, model, upscaler, worker="local-0")
    sources = storage.list_sources(config.src, include=config.include, exclude=config.exclude,
                                   storage_options=config.storage_options)
    rows: list[dict] = []
    bar = _progress_bar(progress)
    with ThreadPoolExecutor(2, thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(2, thread_name_prefix="write") as writers:
        reading: deque[Future] = deque()
        writing: deque[Future] = deque()
        sources_left = True

        def refill():
            nonlocal sources_left
            while sources_left and len(reading) < 2 * config.batch_images:
                source = next(sources, None)
                if source is None:
                    sources_left = False
                    return
                reading.append(readers.submit(read_stage, source, config, template))

        refill()
        while reading:
            group = []
            while reading and len(group) < config.batch_images:
                group.append(reading.popleft().result())
                refill()
            infer_stage(group, upscaler, config.scale)
            for work in group:
                writing.append(writers.submit(finish_stage, work, config, dst_fs, dst_root, reference))
            while writing and (writing[0].done() or len(writing) > 2 * config.batch_images):
                rows.append(writing.popleft().result())
                bar(rows[-1])
        while writing:
            rows.append(writing.popleft().result())
            bar(rows[-1])
    return finish_run(config, run_id, started_at, model, upscaler, dst_fs, dst_root, rows)


def finish_run(config, run_id, started_at, model, upscaler, dst_fs, dst_root, rows) -> dict:
    """Write the manifest rows, then the run record (the commit marker); return the summary."""
    ok = sum(r["status"] == "ok" for r in rows)
    failed = len(rows) - ok
    if rows:
        manifest.write_rows(dst_fs, dst_root, run_id, "local-0", rows)
    finished_at = _now()
    summary = {
        "run_id": run_id,
        "ok": ok,
        "failed": failed,
        "skipped": 0,
        "total": len(rows),
        "seconds": (finished_at - started_at).total_seconds(),
        "megapixels_in": sum((r.get("width") or 0) * (r.get("height") or 0) for r in rows) / 1e6,
        "megapixels_out": sum((r.get("out_width") or 0) * (r.get("out_height") or 0) for r in rows) / 1e6,
        "manifest": storage.full_uri(dst_fs, manifest.manifest_dir(dst_root)),
        "failures": [{"image_id": r["image_id"], "error_type": r["error_type"], "error": r["error"]}
                     for r in rows if r["status"] != "ok"][:20],
    }
    record = {
        **{k: v for k, v in summary.items() if k != "failures"},
        "config": config.public(),
        "executor": "local",
        "model": {"name": model.name, "arch": model.arch, "scale": model.scale, "sha256": model.sha256,
                  "params": model.params, "source": model.source},
        "engine": upscaler.info,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "versions": _versions(),
    }
    manifest.write_run_record(dst_fs, dst_root, run_id, record)
    return summary


def _model_scale_hint(config: RunConfig) -> int:
    """Scale-free models (bicubic) take the requested scale."""
    return max(1, round(config.scale)) if config.scale else 4


def _progress_bar(enabled: bool):
    if not enabled:
        return lambda row: None
    from tqdm import tqdm

    bar = tqdm(unit="img", file=sys.stderr)
    return lambda row: bar.update(1)


def _versions() -> dict:
    import fsspec
    import PIL
    import pyarrow
    import torch

    return {"pipeline": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "pillow": PIL.__version__, "pyarrow": pyarrow.__version__, "fsspec": fsspec.__version__,
            "numpy": np.__version__}
