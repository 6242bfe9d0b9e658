"""COG benchmark: a Sentinel-2-sized COG streamed through rasterio into a COG, under the memory bound.

Cases (each in its own process, so its peak RSS is its own):

- ``s2_x2_bicubic``: a 10980 x 10980 4-band uint16 Cloud-Optimized GeoTIFF (a Sentinel-2
  10 m tile's size: B2, B3, B4, B8; UTM 33N, nodata 0 in a corner as where a swath ends),
  made here with rasterio (smooth fields, texture and noise, written window by window,
  then GDAL's COG driver), upscaled x2 with bicubic through the job (`run_local`; streamed:
  the default threshold is 4096 x 4096): windows read by rasterio, written to a temporary
  tiled GeoTIFF, then copied to a COG with overviews. Target: peak RSS <= 1.5 GiB.
- ``crop_model``: a ``--crop`` x ``--crop`` window of the same image as its own COG, upscaled
  with the bundled default model for ``--model-scale`` (edsr-x4 at x4), in memory.

Every output is checked: rio-cogeo's `cog_validate`, overviews present, size, and the
transform divided by the scale. Prints one JSON object: per case wall seconds, output
megapixels per second, peak RSS, output size and file size, overview levels, validity.
The input is made in a temporary folder outside the repository (or ``--keep DIR``).

    nice python benchmarks/geo_cog.py [--size 10980] [--crop 512] [--model-scale 4] [--cases s2_x2_bicubic,crop_model] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = ("s2_x2_bicubic", "crop_model")
BLOCK = 512
ORIGIN = (399960.0, 5000040.0)  # T33UUP's corner; 10 m pixels


def _field(y0: int, x0: int, h: int, w: int, band: int, size: int, rng) -> np.ndarray:
    """Reflectance-like uint16 values (about 200..12000): gradients, texture and noise per band."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    base = 2500 + 1800 * np.sin(xx / 301.0 + band) * np.cos(yy / 217.0) + 0.2 * (xx + yy) * (band + 1) / 4
    values = base + 400 * np.sin(xx / 7.3 + yy / 11.1) * (1 + band) / 2 + rng.normal(0, 60, (h, w))
    values += 1500 * (band == 3)  # NIR brighter
    out = np.clip(values, 1, 12000).astype(np.uint16)
    out[(xx + yy) < size * 0.15] = 0  # nodata corner
    return out


def make_cog(path: Path, size: int, y0: int = 0, x0: int = 0) -> None:
    """size x size x 4 uint16 COG, written block by block to a tiled GeoTIFF, then COG-copied."""
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    staging = path.with_suffix(".staging.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", nodata=0, crs="EPSG:32633",
                   transform=from_origin(ORIGIN[0] + 10 * x0, ORIGIN[1] - 10 * y0, 10.0, 10.0), tiled=True,
                   blockxsize=BLOCK, blockysize=BLOCK, compress="deflate", predictor=2, BIGTIFF="IF_SAFER")
    with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(staging, "w", **profile) as ds:
        for ty in range(0, size, BLOCK):
            for tx in range(0, size, BLOCK):
                h, w = min(BLOCK, size - ty), min(BLOCK, size - tx)
                ds.write(np.stack([_field(y0 + ty, x0 + tx, h, w, b, 10980, rng) for b in range(4)]),
                         window=Window(tx, ty, w, h))
        ds.descriptions = ("B02", "B03", "B04", "B08")
    with rasterio.Env(GDAL_CACHEMAX=256):
        rasterio.shutil.copy(staging, path, driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=BLOCK,
                             BIGTIFF="IF_SAFER")
    staging.unlink()


def check_output(src: Path, out: Path, scale: int) -> dict:
    """What rasterio and rio-cogeo say of the output."""
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    valid, errors, warnings = cog_validate(str(out), quiet=True)
    with rasterio.open(src) as lr, rasterio.open(out) as sr:
        right = (sr.width, sr.height, sr.count) == (lr.width * scale, lr.height * scale, lr.count) \
            and np.allclose(tuple(sr.transform)[:6], tuple(lr.transform * lr.transform.scale(1 / scale))[:6]) \
            and sr.crs == lr.crs and sr.nodata == lr.nodata and sr.descriptions == lr.descriptions
        return {"cog_valid": bool(valid and not errors), "cog_errors": errors, "cog_warnings": warnings,
                "overviews": sr.overviews(1), "blocks": list(sr.block_shapes[0]), "georeference_right": bool(right),
                "compression": sr.compression.name if sr.compression else None}


def run_case(src: str, dst: str, model: str | None, scale: int) -> dict:
    """One run in this process; returns its figures (called in a child process)."""
    import pyarrow.parquet as pq

    from pipeline.job.local import run_local
    from pipeline.spec import RunSpec

    started = time.perf_counter()
    summary = run_local(RunSpec(src=src, dst=dst, model=model, scale=scale))
    seconds = time.perf_counter() - started
    row = pq.read_table(os.path.join(dst, "_manifest")).to_pylist()[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = Path(dst) / Path(src).name
    result = {
        "status": row["status"], "error": row["error"], "model": row["model"],
        "input": f"{row['width']} x {row['height']} x {row['channels']} {row['dtype']}",
        "output": f"{row['out_width']} x {row['out_height']}",
        "seconds": round(seconds, 1), "seconds_infer": round(row["seconds_infer"] or 0, 1),
        "seconds_write": round(row["seconds_write"] or 0, 1),
        "megapixels_out_per_s": round(summary["megapixels_out"] / seconds, 3),
        "peak_rss_gib": round(peak / 2**30, 3),
        "streamed": row["stream_windows"] is not None, "windows": row["stream_windows"],
        "output_file_mb": round(out.stat().st_size / 1e6, 1) if out.exists() else None,
        "lr_psnr": row["lr_psnr"],
    }
    if out.exists():
        result.update(check_output(Path(src), out, scale))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--model-scale", type=int, default=4)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--make", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # src dst model scale
        print(json.dumps(run_case(*json.loads(args.child))))
        return
    if args.make:  # path size y0 x0: in a process of its own, so no case inherits its peak RSS
        path, size, y0, x0 = json.loads(args.make)
        make_cog(Path(path), size, y0, x0)
        return

    import rasterio
    import torch

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="geo-cog-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                     "torch": torch.__version__, "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__,
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    inputs = {"s2_x2_bicubic": (work / "s2" / "T33UUP_10m.tif", args.size, 0, 0),
              "crop_model": (work / "crop" / "T33UUP_crop.tif", args.crop, args.size // 3, args.size // 3)}
    plans = {"s2_x2_bicubic": ("bicubic", 2), "crop_model": (None, args.model_scale)}
    for case in args.cases.split(","):
        path, size, y0, x0 = inputs[case]
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--make", json.dumps([str(path), size, y0, x0])], check=True)
            results[f"{case}_input"] = {"size": f"{size} x {size} x 4 uint16 COG, deflate, blocks {BLOCK}",
                                        "mb": round(path.stat().st_size / 1e6, 1),
                                        "seconds_to_generate": round(time.perf_counter() - started, 1)}
        dst = work / f"out-{case}"
        if dst.exists():
            import shutil

            shutil.rmtree(dst)
        model, scale = plans[case]
        child = subprocess.run([sys.executable, __file__, "--child", json.dumps([str(path), str(dst), model, scale])],
                               capture_output=True, text=True)
        if child.returncode:
            results[case] = {"error": child.stderr[-2000:]}
        else:
            results[case] = json.loads(child.stdout.strip().splitlines()[-1])
    s2 = results.get("s2_x2_bicubic", {})
    results["within_target"] = bool(s2.get("status") == "ok" and s2.get("peak_rss_gib", 99) <= 1.5
                                    and s2.get("cog_valid") and s2.get("overviews"))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
