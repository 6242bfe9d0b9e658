"""Gigapixel benchmark: streamed upscaling of a Sentinel-2-sized GeoTIFF under a fixed memory bound.

Cases (each in its own process, so its peak RSS is its own):

- ``s2_x2_bicubic``: a 10980 x 10980 4-band uint16 GeoTIFF (the size of a Sentinel-2
  10 m tile: B2, B3, B4, B8), tiled 512 x 512, deflate, generated on the fly tile by
  tile (smooth fields plus texture, a nodata corner as where an orbit's swath ends),
  upscaled x2 with bicubic through `upscaler run --executor local` (streamed: the
  default threshold is 4096 x 4096). Target: peak RSS <= 1.5 GiB.
- ``single_strip_x2_bicubic``: a 20000 x 20000 uint8 gray TIFF stored as one uncompressed
  strip (tifffile's and Pillow's default), x2 bicubic, streamed: each window reads only
  the rows it needs. Target: peak RSS <= 1.5 GiB.
- ``crop_x4_model_streamed`` / ``crop_x4_model_in_memory``: the top-left 2048 x 2048 of
  the same image, x4 with the bundled x4 model when pipeline/weights has one
  (``NAMED_MODELS``), else an EDSR-baseline-sized network (16 blocks x 64 features,
  1.5 M parameters) with seeded random weights: its speed and memory do not depend
  on the weight values. Streamed (threshold lowered) and in memory, with the engine's
  automatic tile (from its memory budget: whole windows here), and streamed with
  ``--tile 128``: the model's activations at the output resolution, not the image,
  set the peak.

Prints one JSON object: per case wall seconds, input and output megapixels per second,
peak RSS, output size, windows, lr_psnr.

    python benchmarks/gigapixel.py [--size 10980] [--crop 2048] [--strip-size 20000] [--cases s2_x2_bicubic,...] [--keep DIR]
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
import tifffile

CASES = ("s2_x2_bicubic", "single_strip_x2_bicubic", "crop_x4_model_streamed", "crop_x4_model_in_memory",
         "crop_x4_model_streamed_tile128")
TILE = 512


def _field(y0: int, x0: int, h: int, w: int, band: int, size: int) -> np.ndarray:
    """Reflectance-like uint16 values (about 200..9000): smooth fields and texture per band."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    base = 2500 + 1800 * np.sin(xx / 301.0 + band) * np.cos(yy / 217.0) + 900 * np.sin((xx + yy) / 41.0)
    fields = base + 400 * np.sin(xx / 7.3 + yy / 11.1) * (1 + band) / 2 + 300 * ((xx * 3 + yy * 5).astype(np.int64) % 17) / 17
    fields += 1500 * (band == 3)  # NIR brighter
    values = np.clip(fields, 1, 12000).astype(np.uint16)
    values[(xx + yy) < size * 0.15] = 0  # nodata corner
    return values


def make_geotiff(path: Path, size: int, y0: int = 0, x0: int = 0) -> None:
    """size x size x 4 uint16 GeoTIFF (UTM 32N, 10 m pixels, nodata 0), written tile by tile."""

    def tiles():
        for ty in range(0, size, TILE):
            for tx in range(0, size, TILE):
                h, w = min(TILE, size - ty), min(TILE, size - tx)
                yield np.stack([_field(y0 + ty, x0 + tx, h, w, b, 10980) for b in range(4)], axis=2)

    geokeys = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632, 3076, 0, 1, 9001)
    extratags = [(33550, 12, 3, (10.0, 10.0, 0.0), True),
                 (33922, 12, 6, (0.0, 0.0, 0.0, 300000.0 + x0 * 10, 5000040.0 - y0 * 10, 0.0), True),
                 (34735, 3, len(geokeys), geokeys, True), (42113, 2, 0, "0", True)]
    with tifffile.TiffWriter(path, bigtiff=size * size * 8 > 2**31) as writer:
        writer.write(tiles(), shape=(size, size, 4), dtype=np.uint16, tile=(TILE, TILE), photometric="minisblack",
                     planarconfig="contig", extrasamples=[0, 0, 0], compression="zlib", predictor=True,
                     extratags=extratags, metadata=None)


def make_single_strip(path: Path, size: int) -> None:
    """size x size uint8 gray, uncompressed, one strip for the whole image: what tifffile and
    Pillow write by default, and the layout a window reader must not decode whole."""
    yy, xx = np.mgrid[0:size, 0:size // 8].astype(np.float32)  # built an eighth at a time: less memory here
    pixels = np.empty((size, size), np.uint8)
    for k in range(8):
        x = xx + k * (size // 8)
        pixels[:, k * (size // 8) : (k + 1) * (size // 8)] = (
            128 + 80 * np.sin(x / 97.0) * np.cos(yy / 61.0) + 30 * np.sin((x + yy) / 7.0)).astype(np.uint8)
    tifffile.imwrite(path, pixels, rowsperstrip=size, photometric="minisblack", metadata=None)


def x4_model(directory: Path) -> tuple[str, str]:
    """(model spec, description): a bundled x4 model, else a saved random-init EDSR-baseline."""
    from pipeline.models import NAMED_MODELS, LoadedModel, save_model

    for name, named in NAMED_MODELS.items():
        if named.weights and named.scale == 4:
            return name, f"bundled {name} ({named.arch}, {named.params} parameters)"
    import torch

    from pipeline.models.edsr.arch import EDSR

    torch.manual_seed(0)
    module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, scale=4)
    model = LoadedModel(name="edsr-baseline-x4-random", arch="EDSR", module=module, scale=4, in_channels=3,
                        out_channels=3, overlap=16, params=sum(p.numel() for p in module.parameters()),
                        config={"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_block": 16,
                                "res_scale": 1.0, "scale": 4})
    path = directory / "edsr-baseline-x4-random.safetensors"
    save_model(model, str(path))
    return str(path), f"EDSR-baseline x4 ({model.params} parameters), seeded random weights: no bundled x4 model"


def run_case(src: str, dst: str, model: str, scale: int, threshold: int, tile: int | None = None) -> dict:
    """One run in this process; returns its figures (called in a child process)."""
    import pyarrow.parquet as pq

    from pipeline.job.local import run_local
    from pipeline.spec import RunSpec

    started = time.perf_counter()
    summary = run_local(RunSpec(src=src, dst=dst, model=model, scale=scale, stream_threshold=threshold, tile=tile))
    seconds = time.perf_counter() - started
    row = pq.read_table(os.path.join(dst, "_manifest")).to_pylist()[0]
    out_file = Path(dst) / Path(src).name if Path(src).is_file() else next(Path(dst).glob("*.tif"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "status": row["status"], "error": row["error"],
        "input": f"{row['width']} x {row['height']} x {row['channels']} {row['dtype']}",
        "output": f"{row['out_width']} x {row['out_height']}",
        "seconds": round(seconds, 1),
        "seconds_infer": round(row["seconds_infer"] or 0, 1),
        "megapixels_in_per_s": round(summary["megapixels_in"] / seconds, 3),
        "megapixels_out_per_s": round(summary["megapixels_out"] / seconds, 3),
        "peak_rss_gib": round(peak / 2**30, 3),
        "streamed": row["stream_windows"] is not None, "windows": row["stream_windows"],
        "output_file_mb": round(out_file.stat().st_size / 1e6, 1) if out_file.exists() else None,
        "lr_psnr": row["lr_psnr"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--crop", type=int, default=2048)
    parser.add_argument("--strip-size", type=int, default=20000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--make-strip", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # src dst model scale threshold [tile]
        print(json.dumps(run_case(*json.loads(args.child))))
        return
    if args.make_strip:
        path, size = json.loads(args.make_strip)
        make_single_strip(Path(path), size)
        return

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gigapixel-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"}
    import torch

    results["torch"] = torch.__version__
    results["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    started = time.perf_counter()
    big = work / "s2" / "S2_T32TQM_10m.tif"
    big.parent.mkdir(exist_ok=True)
    if not big.exists():
        make_geotiff(big, args.size)
    results["input_file"] = {"path": big.name, "size": f"{args.size} x {args.size} x 4 uint16, tiled 512, deflate",
                             "mb": round(big.stat().st_size / 1e6, 1),
                             "seconds_to_generate": round(time.perf_counter() - started, 1)}
    crop = work / "crop" / "S2_crop.tif"
    crop.parent.mkdir(exist_ok=True)
    if not crop.exists():
        make_geotiff(crop, args.crop, y0=args.size // 3, x0=args.size // 3)  # content, no nodata corner
    strip = work / "strip" / "single_strip.tif"
    strip.parent.mkdir(exist_ok=True)
    if "single_strip_x2_bicubic" in args.cases and not strip.exists():
        # In a process of its own: this one's memory would otherwise be every child's starting
        # peak (ru_maxrss survives fork and exec), and building the image takes a few GiB.
        subprocess.run([sys.executable, __file__, "--make-strip", json.dumps([str(strip), args.strip_size])],
                       check=True)
        results["single_strip_file"] = {"size": f"{args.strip_size} x {args.strip_size} uint8, one uncompressed strip",
                                        "mb": round(strip.stat().st_size / 1e6, 1)}
    model, description = x4_model(work)
    results["x4_model"] = description
    plans = {
        "s2_x2_bicubic": (str(big), "bicubic", 2, 4096 * 4096),
        "single_strip_x2_bicubic": (str(strip), "bicubic", 2, 4096 * 4096),
        "crop_x4_model_streamed": (str(crop), model, 4, 1),
        "crop_x4_model_in_memory": (str(crop), model, 4, 0),
        "crop_x4_model_streamed_tile128": (str(crop), model, 4, 1, 128),
    }
    for case in args.cases.split(","):
        src, spec, scale, threshold, *tile = plans[case]
        dst = work / f"out-{case}"
        if dst.exists():
            import shutil

            shutil.rmtree(dst)
        child = json.dumps([src, str(dst), spec, scale, threshold, *tile])
        proc = subprocess.run([sys.executable, __file__, "--child", child], capture_output=True, text=True)
        if proc.returncode:
            results[case] = {"failed": proc.stderr[-2000:]}
        else:
            results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case}: {results[case]}", file=sys.stderr, flush=True)
        if not args.keep:
            import shutil

            shutil.rmtree(dst, ignore_errors=True)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
