"""`upscaler runs DST`: the runs recorded under a destination, with what they cost.

The cost of a run is its images' device-seconds (the manifest's `seconds_infer`,
time spent in the model) in hours, times the GPU-hour price given.
"""

from __future__ import annotations

import json
import posixpath

from pipeline import store
from pipeline.store import manifest


def has_manifest(dst: str, storage_options: dict | None = None) -> bool:
    """Whether any run ever recorded something under DST (rows or a run record): without
    one, `runs` and `rerun` have nothing to read, and a mistyped DST must say so rather
    than print an empty table."""
    fs, root = store.open_location(dst, storage_options)
    folder = manifest.manifest_dir(root)
    try:
        return fs.exists(folder) and any(p.endswith((".json", ".parquet")) for p in fs.find(folder))
    except FileNotFoundError:
        return False


def list_runs(dst: str, storage_options: dict | None = None, *, gpu_hour_price: float | None = None) -> list[dict]:
    fs, root = store.open_location(dst, storage_options)
    runs_dir = posixpath.join(manifest.manifest_dir(root), "_runs")
    table = manifest.read_manifest(fs, root)
    device_seconds: dict[str, float] = {}
    if table.num_rows:
        grouped = table.group_by("run_id").aggregate([("seconds_infer", "sum")])
        device_seconds = {str(r["run_id"]): r["seconds_infer_sum"] or 0.0 for r in grouped.to_pylist()}
    rows = []
    for path in sorted(fs.glob(posixpath.join(runs_dir, "*.json"))):
        with fs.open(path, "r") as f:
            record = json.load(f)
        seconds = device_seconds.get(record["run_id"], 0.0)
        rows.append({
            "run_id": record["run_id"], "started_at": record.get("started_at"), "executor": record.get("executor"),
            "model": record.get("model", {}).get("name"), "ok": record["ok"], "failed": record["failed"],
            "skipped": record["skipped"], "seconds": record["seconds"],
            "megapixels_in": record["megapixels_in"], "megapixels_out": record["megapixels_out"],
            "device_seconds": round(seconds, 3),
            "cost": round(seconds / 3600 * gpu_hour_price, 6) if gpu_hour_price is not None else None,
        })
    return rows
