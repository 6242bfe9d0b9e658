"""`upscaler rerun DST`: redo only what did not end well, with the settings
each image's last run used.

An image qualifies when its latest row (over all runs) is `failed`, or is
`ok` but its output has vanished. A run that was interrupted (Ctrl-C, SIGTERM)
is run again whole with its settings: what it finished is skipped by resume,
the images it never reached are done. Storage options are not recorded anywhere
(they may hold credentials), so they come from the command line again.
Reads only: the caller recovers spooled rows first (job/recovery.py).

Overrides (`--format png`, `--precision fp32`, ...) replace recorded settings for this
rerun only; each group says which ones changed. Quarantine holds as in `run`: an image
that failed the same deterministic way QUARANTINE_AFTER times on unchanged bytes is
left out of the list (and counted) unless `include_quarantined`, because the list is
run with `force` (redo exactly these), and `force` in job/prepare.py drops the strikes
that `resume.to_do` would have checked.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

from pipeline import store
from pipeline.job import resume
from pipeline.spec import RunSpec
from pipeline.store import manifest


# The recorded settings `upscaler rerun` may replace (RunSpec field names).
OVERRIDABLE = ("format", "model", "scale", "tile", "overlap", "precision", "compile", "quality", "device")


@dataclass
class RerunGroup:
    config: RunSpec
    failed: int
    missing: int
    interrupted: bool = False  # the whole run again, resuming
    changed: dict = field(default_factory=dict)  # setting -> (recorded, now): the overrides that differ


def latest_rows(fs, dst_root: str) -> list[dict]:
    columns = ["run_id", "image_id", "src_uri", "dst_uri", "status", "finished_at"]
    return list(manifest.latest_by_image(manifest.rows_in_order(fs, dst_root, columns)).values())


def plan_rerun(dst: str, storage_options: dict | None = None, overrides: dict | None = None, *,
               include_quarantined: bool = False) -> list[RerunGroup]:
    """One group per earlier run whose images need redoing, with that run's settings
    (those in `overrides`, RunSpec field names, replaced)."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise ValueError(f"rerun cannot override {', '.join(sorted(unknown))}: only {', '.join(OVERRIDABLE)}")
    fs, root = store.open_location(dst, storage_options)
    strikes = {} if include_quarantined else resume.PriorIndex.load(fs, root, "").strikes
    by_run: dict[str, dict[str, list[str]]] = {}
    for row in latest_rows(fs, root):
        if row["status"] == "ok":
            if fs.exists(fs._strip_protocol(row["dst_uri"])):
                continue
            reason = "missing"
        elif _quarantined(strikes.get(row["image_id"]), row["src_uri"], storage_options):
            continue  # counted by quarantined_total
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
        options = {"storage_options": dict(storage_options or {}), "run_id": None,
                   "include_quarantined": include_quarantined, **overrides}
        changed = {name: (record["config"].get(name), value) for name, value in overrides.items()
                   if record["config"].get(name) != value}
        if record.get("interrupted"):  # not forced, even if that run was: what it finished is skipped
            config = RunSpec.from_record(record["config"], **{**options, "force": False})
            groups.append(RerunGroup(config, len(reasons["failed"]), len(reasons["missing"]), interrupted=True,
                                     changed=changed))
            continue
        handle, list_path = tempfile.mkstemp(prefix=f"rerun-{run_id}-", suffix=".txt")
        with os.fdopen(handle, "w") as f:
            f.write("\n".join(reasons["failed"] + reasons["missing"]) + "\n")
        config = RunSpec.from_record(record["config"], from_list=list_path, force=True, **options)
        groups.append(RerunGroup(config, len(reasons["failed"]), len(reasons["missing"]), changed=changed))
    return groups


def quarantined_total(dst: str, storage_options: dict | None = None) -> int:
    """Failed images `rerun` leaves out as quarantined, over all runs (for "nothing to redo, N quarantined")."""
    fs, root = store.open_location(dst, storage_options)
    strikes = resume.PriorIndex.load(fs, root, "").strikes
    return sum(row["status"] != "ok" and _quarantined(strikes.get(row["image_id"]), row["src_uri"], storage_options)
               for row in latest_rows(fs, root))


def _quarantined(strike, src_uri: str, storage_options: dict | None) -> bool:
    """`resume.quarantined` for a source known by its URI (its current version read only
    when the strikes are enough)."""
    if not strike or strike[1] < resume.QUARANTINE_AFTER:
        return False
    try:
        fs, path = store.open_location(src_uri, storage_options)
        return resume.quarantined(strike, store.source_at(fs, path, "").version)
    except OSError:  # gone or unreadable: leave it in, the read stage records why
        return False


def _records(fs, root: str) -> dict[str, dict]:
    folder = f"{manifest.manifest_dir(root)}/_runs"
    records = {}
    for path in fs.find(folder) if fs.exists(folder) else []:
        if path.endswith(".json"):
            with fs.open(path, "r") as f:
                records[path.rsplit("/", 1)[-1][:-5]] = json.load(f)
    return records
