"""Manifest files that could not reach the destination, kept on local disk.

When DST stays unreachable, a run must not lose the rows of the images it did
finish (their outputs may already be written) nor crash without a record. The
rows and the run record go here instead:

    $UPSCALER_SPOOL (default ~/.cache/upscaler/spool) / <sha256(DST)[:16]> /
        dst.txt                                 the destination URL
        run_id=<id>/part-<worker>.parquet       as they would be under DST/_manifest
        _runs/<id>.json

The next `upscaler run` or `upscaler rerun` of the same DST uploads them first
(rows before run records, the order a run writes them) and deletes each file once
uploaded, so the manifest ends up exactly as if storage had never gone away.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from pipeline import store
from pipeline.store import manifest


def spool_dir(dst_url: str) -> Path:
    base = Path(os.environ.get("UPSCALER_SPOOL") or Path.home() / ".cache" / "upscaler" / "spool")
    return base / hashlib.sha256(dst_url.rstrip("/").encode()).hexdigest()[:16]


def keep(dst_url: str, relative: str, data: bytes) -> Path:
    """Store one manifest file (path relative to DST/_manifest) for later upload."""
    root = spool_dir(dst_url)
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    (root / "dst.txt").write_text(dst_url + "\n")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def pending(dst_url: str) -> list[str]:
    """Spooled files for this destination, relative paths, rows first."""
    root = spool_dir(dst_url)
    if not root.exists():
        return []
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
             and p.name != "dst.txt" and not p.name.endswith(".tmp")]
    return sorted(files, key=lambda f: (f.startswith("_runs/"), f))


def upload(dst_fs, dst_root: str, dst_url: str) -> int:
    """Upload and delete every spooled file of this destination; returns how many.
    Raises StorageUnavailable (from the retries) while DST is still down."""
    root = spool_dir(dst_url)
    files = pending(dst_url)
    for relative in files:
        manifest.write_file(dst_fs, dst_root, relative, (root / relative).read_bytes())
        (root / relative).unlink()
    if files:
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if not pending(dst_url):
            (root / "dst.txt").unlink(missing_ok=True)
    return len(files)


def dst_url(dst_fs, dst_root: str) -> str:
    """The key a destination is spooled under: its full URL."""
    return store.full_uri(dst_fs, dst_root)
