"""Per-image overhead: many small images end to end, against a plain loop doing the same work.

Two cases (issue 14): 1,000 images of 32 x 32 with bicubic x2, and 1,000 of 64 x 64 with
`edsr-x2`. For each:

- floor:  a plain loop with the same thread count: Pillow decode, the engine's forward
          (`Upscaler.upscale`, the same resize or model), PNG encode with the run's settings
          (libpng, level 1, Paeth filter, run-length strategy: the same bytes), write a file;
- local:  `upscaler run --executor local` (reads, writes and scoring overlap the model);
- ray_N:  `upscaler run --executor ray --workers N` on a local Ray (N = 1, 2), and which
          workers did the work (each row names its worker).

vs_floor (the target) counts each run whole; steady_vs_floor counts it from the first
image's start to the last one's finish (manifest times), so that start-up (Ray's actors)
and the close are seen apart; startup_and_close_seconds is the difference.

Prints one JSON object: images/s and each executor's speed as a fraction of the floor's.

    python benchmarks/small_images.py [--count 1000] [--cases bicubic-32,edsr-x2-64] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import imagecodecs
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.inference.engine import Upscaler
from pipeline.job.local import run_local
from pipeline.models import load_model
from pipeline.spec import RunSpec

CASES = {"bicubic-32": ("bicubic", 32), "edsr-x2-64": ("edsr-x2", 64)}


def make_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size * 4, size * 4, 3), dtype=np.uint8)
    for i in range(count):  # crops of one noisy picture: realistic PNG sizes, all different
        y, x = rng.integers(0, size * 3, 2)
        Image.fromarray(base[y : y + size, x : x + size]).save(folder / f"{i:05d}.png")


def floor(src: Path, out: Path, model: str) -> float:
    upscaler = Upscaler(load_model(model), device="cpu")
    out.mkdir()
    files = sorted(src.iterdir())
    started = time.perf_counter()
    for path in files:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        result = upscaler.upscale([pixels], 2)[0]
        (out / path.name).write_bytes(imagecodecs.png_encode(result, level=1, strategy=zlib.Z_RLE,
                                                            filter=imagecodecs.PNG.FILTER.PAETH))
    return time.perf_counter() - started


def workers_of(dst: Path) -> dict:
    rows = pq.read_table(str(dst / "_manifest")).to_pylist()
    return dict(Counter(r["worker"] for r in rows))


def steady_seconds(dst: Path) -> float:
    """First image started to last image finished (from the manifest): the run without its
    start-up (model load, listing; for Ray, the cluster's actors) and its close."""
    rows = pq.read_table(str(dst / "_manifest"), columns=["started_at", "finished_at"]).to_pylist()
    return (max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    report = {"benchmark": "small_images", "count": args.count, "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "cases": {}}
    ray = None
    if not args.no_ray:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    for case in args.cases.split(","):
        model, size = CASES[case]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            make_images(tmp / "src", args.count, size)
            seconds = {"floor": floor(tmp / "src", tmp / "floor", model)}
            spec = dict(src=str(tmp / "src"), model=model, scale=2)
            started = time.perf_counter()
            summary = run_local(RunSpec(dst=str(tmp / "local"), **spec))
            seconds["local"] = time.perf_counter() - started
            assert summary["ok"] == args.count, summary
            steady = {"local": steady_seconds(tmp / "local")}
            workers = {}
            if ray is not None:
                from pipeline.job.ray import RayOptions, run_ray

                for n in (1, 2):
                    dst = tmp / f"ray{n}"
                    started = time.perf_counter()
                    summary = run_ray(RunSpec(dst=str(dst), **spec),
                                      RayOptions(workers=n, cpus_per_worker=max(0.25, (os.cpu_count() - 1) / n)))
                    seconds[f"ray_{n}"] = time.perf_counter() - started
                    assert summary["ok"] == args.count, summary
                    workers[f"ray_{n}"] = workers_of(dst)
                    steady[f"ray_{n}"] = steady_seconds(dst)
            report["cases"][case] = {
                "model": model, "size": size,
                "images_per_second": {k: round(args.count / v, 1) for k, v in seconds.items()},
                "vs_floor": {k: round(seconds["floor"] / v, 3) for k, v in seconds.items() if k != "floor"},
                # not the target: images/s between the first image's start and the last one's finish
                "steady_vs_floor": {k: round(seconds["floor"] / v, 3) for k, v in steady.items()},
                "startup_and_close_seconds": {k: round(seconds[k] - v, 2) for k, v in steady.items()},
                "rows_per_worker": workers,
            }
    report["target"] = "every executor >= 0.8 of the floor (vs_floor)"
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
