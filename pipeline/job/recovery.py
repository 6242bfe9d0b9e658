"""Recovery, an explicit step before a run or rerun writes anything (never in `plan`):
manifest files an earlier run spooled locally while DST was down are uploaded, and
plan chunks that finished runs could not remove are removed."""

from __future__ import annotations

import posixpath

from pipeline.store import manifest, spool


def recover(dst_fs, dst_root: str) -> None:
    spool.upload(dst_fs, dst_root, spool.dst_url(dst_fs, dst_root))
    remove_finished_plans(dst_fs, dst_root)


def remove_finished_plans(dst_fs, dst_root: str) -> None:
    """Plan chunks (DST/_plans/<run_id>/) of finished runs; plans of runs still going
    (no run record yet) are left alone; an empty _plans folder goes too."""
    plans = posixpath.join(dst_root, "_plans")
    if not dst_fs.exists(plans):
        return
    for folder in dst_fs.ls(plans, detail=False):
        record = posixpath.join(manifest.manifest_dir(dst_root), "_runs", f"{posixpath.basename(folder)}.json")
        if dst_fs.exists(record):
            dst_fs.rm(folder, recursive=True)
    remove_if_empty(dst_fs, plans)


def remove_if_empty(fs, folder: str) -> None:
    try:
        if fs.exists(folder) and not fs.ls(folder, detail=False):
            fs.rmdir(folder)
    except OSError:
        pass  # object stores have no folders; another run may have just added one
