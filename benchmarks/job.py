"""Distributed job benchmark (prints JSON).

- overhead:   the same small batch through Ray and through `--executor local`;
- driver:     list and plan 1,000,000 keys (a generated listing served by an
              in-process fsspec filesystem, so no million files are needed),
              streamed into the Parquet plan chunks the Ray executor reads;
              wall time and peak driver RSS (target: <= 60 s, <= 1.5 GiB);
- throughput: images/s with 1 and 2 workers on this machine (no target on 2 cores).

    python benchmarks/job.py [--keys 1000000] [--images 24]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fsspec import AbstractFileSystem, register_implementation
from PIL import Image

from pipeline.models import LoadedModel, save_model
from pipeline.models.edsr.arch import EDSR


class GeneratedListing(AbstractFileSystem):
    """`generated://N` lists N image keys in folders of 1000, without storing them."""

    protocol = "generated"

    def _total(self, path: str) -> int:
        return int(self._strip_protocol(path).strip("/").split("/")[0])

    def isfile(self, path):
        return False

    def exists(self, path, **kwargs):
        return True

    def walk(self, path, maxdepth=None, detail=False, **kwargs):
        root = self._strip_protocol(path).rstrip("/")
        total = self._total(path)
        for folder in range(0, total, 1000):
            directory = f"{root}/f{folder // 1000:05d}"
            files = {f"img{i:07d}.png": {"name": f"{directory}/img{i:07d}.png", "size": 100_000 + i, "type": "file",
                                         "mtime": 1.7e9 + i} for i in range(folder, min(total, folder + 1000))}
            yield directory, [], files


def plan_driver(keys: int) -> dict:
    """Run in a fresh process so its peak RSS is the planner's own."""
    register_implementation("generated", GeneratedListing, clobber=True)
    from pipeline.job.prepare import load_spec_model, prepare
    from pipeline.job.units import write_plan
    from pipeline.job.worker import build_upscaler
    from pipeline.spec import RunSpec

    with tempfile.TemporaryDirectory() as dst:
        started = time.perf_counter()
        spec = RunSpec(src=f"generated://{keys}", dst=dst, model="bicubic")
        model = load_spec_model(spec)
        p = prepare(spec, model, build_upscaler(spec, model).info)
        paths = write_plan(p.todo, p.info.dst_fs, f"{dst}/_plans/{p.info.run_id}")
        seconds = time.perf_counter() - started
    return {"keys": keys, "planned": p.counts.todo, "plan_files": len(paths), "seconds": round(seconds, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def make_images(src: Path, count: int, size: int = 128) -> None:
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        yy, xx = np.mgrid[0:size, 0:size]
        pixels = np.stack([(xx * (i + 2) + yy * (k + 3)) % 256 for k in range(3)], axis=2)
        pixels = np.clip(pixels + rng.integers(-10, 10, pixels.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (src / f"img{i:03d}.png").write_bytes(buffer.getvalue())


def timed_run(args: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--json", "--no-progress"],
                         capture_output=True, text=True, check=True).stdout
    summary = json.loads(out[out.rfind("\n{\n") + 1 if out.rfind("\n{\n") >= 0 else 0:])
    return time.perf_counter() - started, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--plan-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_only:
        print(json.dumps(plan_driver(args.keys)))
        return
    report = {"benchmark": "job", "machine": {"cpus": __import__("os").cpu_count()}}
    out = subprocess.run([sys.executable, __file__, "--plan-only", "--keys", str(args.keys)],
                         capture_output=True, text=True, check=True).stdout
    report["driver_plan"] = json.loads(out.strip().splitlines()[-1])
    report["driver_plan"]["targets"] = {"seconds": "<= 60", "peak_rss_mib": "<= 1536"}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "src", args.images)
        torch.manual_seed(0)
        module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=32, num_block=8, scale=2)
        weights = tmp / "edsr-32x8-x2.safetensors"
        save_model(LoadedModel(name="bench", arch="EDSR", module=module, scale=2, in_channels=3, out_channels=3,
                               config={"num_feat": 32, "num_block": 8, "res_scale": 1.0, "scale": 2}), str(weights))
        common = ["run", str(tmp / "src"), "--model", str(weights)]
        seconds_local, local = timed_run(common[:2] + [str(tmp / "local")] + common[2:] + ["--executor", "local"])
        runs = {"local": {"seconds": round(seconds_local, 2), "images_per_second": round(local["ok"] / seconds_local, 2)}}
        for workers in (1, 2):
            seconds, summary = timed_run(common[:2] + [str(tmp / f"ray{workers}")] + common[2:] + ["--workers", str(workers)])
            assert summary["ok"] == args.images, summary
            runs[f"ray_{workers}_workers"] = {"seconds": round(seconds, 2),
                                              "images_per_second": round(summary["ok"] / seconds, 2)}
    report["throughput"] = {"images": args.images, "image_size": "128x128 -> 256x256",
                            "model": "EDSR 32 features x 8 blocks, x2", "runs": runs,
                            "note": "wall time of the whole command, Ray start-up included"}
    report["overhead"] = {"ray_1_worker_vs_local_seconds": round(runs["ray_1_workers"]["seconds"] - runs["local"]["seconds"], 2)}
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
