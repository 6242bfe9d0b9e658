"""Scaling: many small images through Ray with 1 and 2 workers on one node, and with 2
workers on a 2-node local cluster (`ray.cluster_utils.Cluster`: real raylets), and which
workers did the work (each manifest row names its worker).

Each run is timed end to end (the command's wall time: Ray Data start, actors loading the
model, the manifest) and from its rows (first image started to last finished: the
steady rate once the actors run). Prints one JSON object.

    python benchmarks/scaling.py [--count 2000] [--model edsr-x2] [--size 32] [--cases one-1,one-2,two-nodes]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from small_images import make_images  # noqa: E402

from pipeline.job.ray import RayOptions, run_ray  # noqa: E402
from pipeline.spec import RunSpec  # noqa: E402


def rows_of(dst: Path) -> list[dict]:
    return pq.read_table(str(dst / "_manifest")).to_pylist()


def one_run(src: Path, dst: Path, model: str, workers: int, cpus: float) -> dict:
    started = time.perf_counter()
    summary = run_ray(RunSpec(src=str(src), dst=str(dst), model=model, scale=2),
                      RayOptions(workers=workers, cpus_per_worker=cpus, stall_timeout=600))
    seconds = time.perf_counter() - started
    rows = rows_of(dst)
    span = (max(r["finished_at"] for r in rows) - min(r["started_at"] for r in rows)).total_seconds()
    return {"ok": summary["ok"], "failed": summary["failed"], "seconds": round(seconds, 2),
            "images_per_second": round(len(rows) / seconds, 1),
            "steady_images_per_second": round(len(rows) / span, 1) if span > 0 else None,
            "rows_per_worker": dict(Counter(r["worker"] for r in rows))}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--model", default="edsr-x2")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cases", default="one-1,one-2,two-nodes")
    args = parser.parse_args()
    cpus = os.cpu_count()
    report = {"benchmark": "scaling", "count": args.count, "model": args.model, "size": args.size, "cpus": cpus,
              "runs": {}}
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "src", args.count, args.size)
        if any(c.startswith("one-") for c in cases):
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
            for case in cases:
                if case.startswith("one-"):
                    n = int(case.split("-")[1])
                    # fractional CPUs: actors taking every CPU starve Ray Data's own tasks
                    report["runs"][case] = one_run(tmp / "src", tmp / case, args.model, n, max(0.25, (cpus - 0.5) / n))
            ray.shutdown()
        if "two-nodes" in cases:
            from ray import cluster_utils

            cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": max(1, cpus // 2)})
            cluster.add_node(num_cpus=max(1, cpus // 2))
            ray.init(address=cluster.address, log_to_driver=False)
            per_node = max(1, cpus // 2)
            report["runs"]["two-nodes"] = one_run(tmp / "src", tmp / "two-nodes", args.model, 2,
                                                  max(0.25, per_node - 0.5))
            report["runs"]["two-nodes"]["nodes"] = len([n for n in ray.nodes() if n["Alive"]])
            ray.shutdown()
            cluster.shutdown()
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
