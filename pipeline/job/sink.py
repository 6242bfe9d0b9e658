"""Record: finished rows into the manifest, in parts, then the run record as the commit marker.

Rows are flushed every `flush_every` rows and every `FLUSH_SECONDS`, and on every way
out of a run (`recording`: Ctrl-C, SIGTERM, an exception), so an interrupted run redoes little.
When DST stays unreachable, manifest files go to the local spool (store/spool.py) and
the next run or rerun uploads them first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from pipeline import __version__, store
from pipeline.errors import one_line
from pipeline.formats import nifti
from pipeline.job.circuit import Circuit
from pipeline.stages import stac
from pipeline.store.manifest import ManifestRow, to_table
from pipeline.store import manifest, spool

FLUSH_SECONDS = 30.0


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class RunInfo:
    """What the run record says besides the counts."""

    run_id: str
    started_at: dt.datetime
    spec: object  # spec.RunSpec
    config_key: str
    model: object  # models.LoadedModel
    dst_fs: object
    dst_root: str
    skipped: int = 0
    quarantined: int = 0


class RowSink:
    def __init__(self, info: RunInfo, worker: str, *, flush_every: int = 1000, progress: bool = False,
                 total: int | None = None):
        self.info, self.worker, self.flush_every = info, worker, flush_every
        self.pending: list[ManifestRow] = []
        self.parts = 0
        self.last_flush = time.monotonic()
        self.counts = {"ok": 0, "failed": 0}
        self.megapixels = [0.0, 0.0]
        self.device_seconds = 0.0
        self.failures: list[dict] = []
        self.bar = _progress_bar(progress, total)
        self.circuit = Circuit(info.spec.storage_failures)
        self.spooled: list[str] = []  # manifest files kept locally: DST was unreachable
        self.storage_error = ""
        self.stac_items: list[str] = []  # the run's STAC Items, for its Collection

    def add(self, row: ManifestRow) -> None:
        self.circuit.record(row)
        self.pending.append(row)
        self.counts["ok" if row.ok else "failed"] += 1
        planes = (row.channels or 1) if row.src_format in nifti.FORMATS else 1  # a volume: every slice
        self.megapixels[0] += (row.width or 0) * (row.height or 0) * planes / 1e6
        self.megapixels[1] += (row.out_width or 0) * (row.out_height or 0) * planes / 1e6
        self.device_seconds += row.seconds_infer or 0.0
        if row.ok and row.stac_item_uri:
            self.stac_items.append(row.stac_item_uri)
        if not row.ok and len(self.failures) < 20:
            self.failures.append({"image_id": row.image_id, "error_type": row.error_type, "error": row.error})
        self.bar(row, self.counts["failed"])
        if len(self.pending) >= self.flush_every or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.pending:
            name = f"{self.worker}-{self.parts:05d}"
            self.write(*manifest.rows_part(self.info.run_id, name, to_table(self.pending)))
            self.parts += 1
            self.pending = []

    def write(self, relative: str, data: bytes) -> None:
        """A manifest file to DST, or to the local spool when DST stays unreachable
        (once it was, the rest of the run goes to the spool too: rows stay in order)."""
        if not self.storage_error:
            try:
                manifest.write_file(self.info.dst_fs, self.info.dst_root, relative, data)
                return
            except store.StorageUnavailable as error:
                self.storage_error = str(error)
        spool.keep(spool.dst_url(self.info.dst_fs, self.info.dst_root), relative, data)
        self.spooled.append(relative)

    def close(self, *, executor: str, engine: dict, interrupted: str = "", extra: dict | None = None) -> dict:
        """Flush the last rows, then write the run record; return the summary."""
        self.bar.close()  # its last state drawn (n/total), the line ended before the summary
        self.flush()
        info, finished_at = self.info, now()
        summary = {
            "run_id": info.run_id,
            "ok": self.counts["ok"],
            "failed": self.counts["failed"],
            "skipped": info.skipped,
            "quarantined": info.quarantined,
            "total": self.counts["ok"] + self.counts["failed"] + info.skipped + info.quarantined,
            "seconds": (finished_at - info.started_at).total_seconds(),
            "megapixels_in": round(self.megapixels[0], 6),
            "megapixels_out": round(self.megapixels[1], 6),
            "device_seconds": round(self.device_seconds, 3),
            "manifest": store.full_uri(info.dst_fs, manifest.manifest_dir(info.dst_root)),
            "failures": self.failures,
        }
        if interrupted:
            summary["interrupted"] = interrupted
        summary.update(self._collection())
        model = info.model
        record = {
            **{k: v for k, v in summary.items() if k != "failures"},
            "config": info.spec.public(),
            "config_key": info.config_key,
            "executor": executor,
            "model": {"name": model.name, "arch": model.arch, "scale": model.scale, "sha256": model.sha256,
                      "params": model.params, "source": model.source},
            "engine": engine,
            "started_at": info.started_at.isoformat(),
            "finished_at": finished_at.isoformat(),
            "versions": _versions(),
            **(extra or {}),
        }
        self.write(*manifest.run_record(info.run_id, record))
        if self.storage_error:
            summary["storage_error"] = self.storage_error
            summary["spooled"] = {"files": len(self.spooled),
                                  "folder": str(spool.spool_dir(spool.dst_url(info.dst_fs, info.dst_root)))}
        return summary


    def _collection(self) -> dict:
        """The run's STAC Collection (stages/stac.py), before the run record: {"stac_collection": URI},
        or why there is none where the run made Items."""
        if not self.stac_items:
            return {}
        if self.storage_error:
            return {"stac_collection_error": f"not written: {self.storage_error}"}
        info = self.info
        try:
            return {"stac_collection": stac.write_collection(info.dst_fs, info.dst_root, info.run_id, self.stac_items,
                                                             info.spec.storage_options)}
        except Exception as error:  # the rows and the run record come first: they say what was done
            return {"stac_collection_error": f"not written: {type(error).__name__}: {one_line(error)}"}


def _progress_bar(enabled: bool, total: int | None = None, *, file=None):
    """A live bar on stderr: images done of `total` (the to-do list, known once planned:
    skipped and quarantined images are not in it), the ETA, images/s, output Mpx/s and
    failures, so a long run says when it ends and whether it is going wrong. The rates are
    over the whole run (tqdm's own rate flips to s/img below 1 img/s, and is smoothed).
    Returns `update(row, failed)`, with `update.close()` to draw the final state."""
    if not enabled:
        update = lambda row, failed: None  # noqa: E731
        update.close = lambda: None
        return update
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", file=file or sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
               if total else "{n_fmt} img [{elapsed}{postfix}]")
    started, out_mp = time.perf_counter(), [0.0]

    def update(row, failed):
        out_mp[0] += (row.out_width or 0) * (row.out_height or 0) / 1e6
        elapsed = max(1e-9, time.perf_counter() - started)
        bar.set_postfix_str(f"{(bar.n + 1) / elapsed:.2f} img/s, {out_mp[0] / elapsed:.2f} Mpx/s out, "
                            f"{failed} failed", refresh=False)
        bar.update(1)

    update.close = bar.close
    return update


def _versions() -> dict:
    import fsspec
    import PIL
    import pyarrow
    import torch

    return {"pipeline": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "pillow": PIL.__version__, "pyarrow": pyarrow.__version__, "fsspec": fsspec.__version__,
            "numpy": np.__version__}


class RunInterrupted(Exception):
    """The run was stopped by a signal; its rows and record are written. `summary` is the run's summary."""

    def __init__(self, signal_name: str, summary: dict):
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name, self.summary = signal_name, summary

    @property
    def exit_status(self) -> int:
        return 128 + (signal.SIGTERM if self.signal_name == "SIGTERM" else signal.SIGINT)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM interrupts the main thread as Ctrl-C does (only where a handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def recording(sink: "RowSink", *, executor: str, engine: dict, before_close=None):
    """Run a job's loop so that every way out of it writes the rows and the run record:
    Ctrl-C and SIGTERM become `RunInterrupted` (the record says so), an exception of ours
    propagates (the record names it: `rerun` resumes such runs). `outcome["summary"]`
    holds the summary afterwards."""
    outcome: dict = {}
    interrupted = ""
    with sigterm_raises():
        try:
            yield outcome
        except KeyboardInterrupt:
            interrupted = "SIGINT"
        except _Terminated:
            interrupted = "SIGTERM"
        except Exception as error:
            interrupted = f"error: {type(error).__name__}: {one_line(error)}"
            raise
        finally:
            if before_close is not None:
                before_close()
            outcome["summary"] = sink.close(executor=executor, engine=engine, interrupted=interrupted)
    if interrupted:
        raise RunInterrupted(interrupted, outcome["summary"])
