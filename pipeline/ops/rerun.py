"""`upscaler rerun DST`: redo only what did not end well, with the settings
each image's last run used.

An image qualifies when its latest row (over all runs) is `failed`, or is
`ok` but its output has vanished. Storage options are not recorded anywhere
(they may hold credentials), so they come from the command line again.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, fields

from pipeline import store
from pipeline.store import manifest
from pipeline.store import spool
from pipeline.runner import RunConfig


@dataclass
class RerunGroup:
    config: RunConfig
    failed: int
    missing: int


def latest_rows(fs, dst_root: str) -> list[dict]:
    table = manifest.read_manifest(fs, dst_root)
    if table.num_rows == 0:
        return []
    table = table.select(["run_id", "image_id", "src_uri", "dst_uri", "status", "finished_at"])
    latest: dict[str, dict] = {}
    for row in table.sort_by([("finished_at", "ascending")]).to_pylist():
        latest[row["image_id"]] = row
    return list(latest.values())


def plan_rerun(dst: str, storage_options: dict | None = None) -> list[RerunGroup]:
    """One group per earlier run whose images need redoing, with that run's settings."""
    fs, root = store.open_location(dst, storage_options)
    spool.upload(fs, root, spool.dst_url(fs, root))  # rows a run could not write while storage was down
    by_run: dict[str, dict[str, list[str]]] = {}
    for row in latest_rows(fs, root):
        if row["status"] == "ok":
            if fs.exists(fs._strip_protocol(row["dst_uri"])):
                continue
            reason = "missing"
        else:
            reason = "failed"
        by_run.setdefault(str(row["run_id"]), {"failed": [], "missing": []})[reason].append(row["src_uri"])
    groups = []
    known = {f.name for f in fields(RunConfig)}
    for run_id, reasons in sorted(by_run.items()):
        record_path = f"{manifest.manifest_dir(root)}/_runs/{run_id}.json"
        with fs.open(record_path, "r") as f:
            recorded = json.load(f)["config"]
        settings = {k: v for k, v in recorded.items() if k in known and k not in ("run_id", "storage_options")}
        for key in ("include", "exclude"):
            settings[key] = tuple(settings.get(key) or ())
        handle, list_path = tempfile.mkstemp(prefix=f"rerun-{run_id}-", suffix=".txt")
        with os.fdopen(handle, "w") as f:
            f.write("\n".join(reasons["failed"] + reasons["missing"]) + "\n")
        config = RunConfig(**{**settings, "from_list": list_path, "force": True,
                              "storage_options": dict(storage_options or {})})
        groups.append(RerunGroup(config, len(reasons["failed"]), len(reasons["missing"])))
    return groups
