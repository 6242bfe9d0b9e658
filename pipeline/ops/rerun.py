"""`upscaler rerun DST`: redo only what did not end well, with the settings
each image's last run used.

An image qualifies when its latest row (over all runs) is `failed`, or is
`ok` but its output has vanished. A run that was interrupted (Ctrl-C, SIGTERM)
is run again whole with its settings: what it finished is skipped by resume,
the images it never reached are done. Storage options are not recorded anywhere
(they may hold credentials), so they come from the command line again.
Reads only: the caller recovers spooled rows first (job/recovery.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

from pipeline import store
from pipeline.spec import RunSpec
from pipeline.store import manifest


@dataclass
class RerunGroup:
    config: RunSpec
    failed: int
    missing: int
    interrupted: bool = False  # the whole run again, resuming


def latest_rows(fs, dst_root: str) -> list[dict]:
    columns = ["run_id", "image_id", "src_uri", "dst_uri", "status", "finished_at"]
    return list(manifest.latest_by_image(manifest.rows_in_order(fs, dst_root, columns)).values())


def plan_rerun(dst: str, storage_options: dict | None = None) -> list[RerunGroup]:
    """One group per earlier run whose images need redoing, with that run's settings."""
    fs, root = store.open_location(dst, storage_options)
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
    records = sorted(_records(fs, root).items(), key=lambda item: item[1].get("started_at") or "")
    for index, (run_id, recorded) in enumerate(records):
        finished_later = any(not later.get("interrupted") and later.get("config_key") == recorded.get("config_key")
                             and later["config"].get("src") == recorded["config"].get("src")
                             and not later["config"].get("from_list") for _, later in records[index + 1:])
        if recorded.get("interrupted") and not finished_later and run_id not in by_run:
            by_run[run_id] = {"failed": [], "missing": []}
    for run_id, reasons in sorted(by_run.items()):
        record_path = f"{manifest.manifest_dir(root)}/_runs/{run_id}.json"
        with fs.open(record_path, "r") as f:
            record = json.load(f)
        options = {"storage_options": dict(storage_options or {}), "run_id": None}
        if record.get("interrupted"):
            config = RunSpec.from_record(record["config"], **options)
            groups.append(RerunGroup(config, len(reasons["failed"]), len(reasons["missing"]), interrupted=True))
            continue
        handle, list_path = tempfile.mkstemp(prefix=f"rerun-{run_id}-", suffix=".txt")
        with os.fdopen(handle, "w") as f:
            f.write("\n".join(reasons["failed"] + reasons["missing"]) + "\n")
        config = RunSpec.from_record(record["config"], from_list=list_path, force=True, **options)
        groups.append(RerunGroup(config, len(reasons["failed"]), len(reasons["missing"])))
    return groups


def _records(fs, root: str) -> dict[str, dict]:
    folder = f"{manifest.manifest_dir(root)}/_runs"
    records = {}
    for path in fs.find(folder) if fs.exists(folder) else []:
        if path.endswith(".json"):
            with fs.open(path, "r") as f:
                records[path.rsplit("/", 1)[-1][:-5]] = json.load(f)
    return records
