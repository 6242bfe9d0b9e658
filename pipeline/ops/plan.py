"""What a run will cost before it starts, and what it cost after.

Throughput is measured by `upscaler calibrate` as output megapixels per
device-second for one model on one device (with the tile and precision it
was measured at), and stored in a user cache that `plan` reads. Without a
calibration, `plan` uses a per-device default and says so:

- cpu:  0.5 output Mpx/s (EDSR-baseline x4 measured 1.1 on a 2-core x86 VM; slower models exist)
- cuda: 20 output Mpx/s (a conservative figure for EDSR-baseline-sized models in half precision)

Device-seconds = output megapixels / (Mpx/s); cost = device-hours * --gpu-hour-price.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import time
from dataclasses import asdict, dataclass

from pipeline.inference import calibration

DEFAULT_MPX_PER_SECOND = {"cpu": 0.5, "cuda": 20.0}


@dataclass
class Throughput:
    mpx_per_second: float
    source: str  # "calibrated <date>" or "default for <device type>"


def throughput(model_id: str, device: str) -> Throughput:
    entry = calibration.lookup(model_id, device)
    if entry and "mpx_per_second" in entry:
        return Throughput(entry["mpx_per_second"], f"calibrated {entry['measured_at']} ({calibration.cache_path()})")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return Throughput(DEFAULT_MPX_PER_SECOND[kind],
                      f"default for {kind} (no calibration for this model on {device}: run `upscaler calibrate`)")


def calibrate(model_spec: str, device: str = "auto", tile: int | None = None, precision: str = "auto",
              seconds: float = 10.0, size: int = 256, compile: bool = False) -> dict:
    """Without `tile`, first find the fastest tile (and batch size on CUDA) for the engine to
    use from now on (calibration.measure_tiles, half the time); then time the engine on a
    synthetic photo-like image until `seconds` pass; store Mpx/s for `plan`."""
    import numpy as np

    from pipeline.inference.engine import Upscaler
    from pipeline.models import load_model

    model = load_model(model_spec)
    upscaler = Upscaler(model, device=device, precision=precision, tile=tile, compile=compile)
    tuning = {}
    if tile is None and not upscaler.interpolation:
        seconds /= 2
        tuning = calibration.measure_tiles(upscaler, seconds)
        upscaler.tuned_tile, upscaler.tuned_batch = tuning["best_tile"], tuning["best_batch"]
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.stack([np.sin(8 * xx + k) * np.cos(6 * yy) * 100 + 128 for k in range(3)], axis=2).astype(np.uint8)
    upscaler.upscale([image])  # warm-up
    done, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds or done == 0:
        out = upscaler.upscale([image])[0]
        done += out.shape[0] * out.shape[1] / 1e6
    mpx_per_second = done / (time.perf_counter() - started)
    entry = {"model": model.name, "model_id": calibration.model_id(model),
             "device": calibration.device_name(upscaler.device), "tile": upscaler.info["tile"],
             "precision": upscaler.precision, "compile": upscaler.compile,
             "mpx_per_second": round(mpx_per_second, 4), **tuning,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = calibration.store(entry)
    return {**entry, "cache": str(path)}


def image_size(uri: str, storage_options: dict | None = None) -> tuple[int, int] | None:
    """(width, height) from the header only (a few KB read), or None if unknown."""
    from PIL import Image

    from pipeline import store
    from pipeline.formats import TIFF_MAGIC, safe
    from pipeline.stages import read as read_stage

    try:
        if safe.is_safe(uri):  # a Sentinel-2 product: the header of its B02 band file, read in ranges
            import rasterio

            fs, root, names = read_stage.safe_files(uri, storage_options)
            band = safe.band_files(names, uri)["B02"]
            with rasterio.open(posixpath.join(root, band) if root else band, opener=fs.open) as ds:
                return ds.width, ds.height
        fs, path = store.object_at(uri, storage_options)
        with fs.open(path, "rb") as f:
            head = f.read(1 << 16)
            if head.startswith(TIFF_MAGIC):
                import tifffile

                f.seek(0)
                with tifffile.TiffFile(f) as tif:
                    page = tif.pages[0]
                    return int(page.imagewidth), int(page.imagelength)
            with Image.open(io.BytesIO(head)) as im:
                return im.size
    except Exception:
        return None


@dataclass
class Estimate:
    total: int
    todo: int
    done: int
    failed: int
    quarantined: int
    megapixels_in: float
    megapixels_out: float
    unknown_size: int
    mpx_per_second: float
    throughput_source: str
    estimated_device_seconds: float
    gpu_hour_price: float | None
    estimated_cost: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(spec, *, gpu_hour_price: float | None = None, include_quarantined: bool = False) -> Estimate:
    """Plan a run without running it or writing anything: counts from the listing and
    earlier manifests, megapixels from image headers, device-seconds from calibration."""
    import dataclasses

    from pipeline.job.prepare import load_spec_model, prepare
    from pipeline.job.worker import build_upscaler

    if include_quarantined:
        spec = dataclasses.replace(spec, include_quarantined=True)
    model = load_spec_model(spec)
    upscaler = build_upscaler(spec, model)
    p = prepare(spec, model, upscaler.info)  # the same listing and resume filter as a run
    counts = p.counts
    scale = float(spec.scale or model.scale)
    mpx_in = mpx_out = 0.0
    unknown = 0
    for planned in p.todo:
        size = image_size(planned.source.uri, spec.storage_options)
        if size is None:
            unknown += 1
            continue
        mpx_in += size[0] * size[1] / 1e6
        mpx_out += round(size[0] * scale) * round(size[1] * scale) / 1e6
    device = calibration.device_name(upscaler.device)
    speed = throughput(calibration.model_id(model), device)
    seconds = mpx_out / speed.mpx_per_second
    return Estimate(
        total=counts.todo + counts.skipped + counts.quarantined, todo=counts.todo, done=counts.skipped,
        failed=counts.retried, quarantined=counts.quarantined, megapixels_in=round(mpx_in, 6),
        megapixels_out=round(mpx_out, 6), unknown_size=unknown, mpx_per_second=speed.mpx_per_second,
        throughput_source=speed.source, estimated_device_seconds=round(seconds, 2),
        gpu_hour_price=gpu_hour_price,
        estimated_cost=round(seconds / 3600 * gpu_hour_price, 4) if gpu_hour_price is not None else None,
    )
