"""`--executor local`: the whole run in this process, no Ray.

Reads and writes run in threads while the main thread keeps the model busy, with
bounded queues (at most two groups read ahead, two groups being written). On Ctrl-C or
SIGTERM the images being written are finished and recorded, the rest of the rows and
the run record (marked interrupted) are written, and `RunInterrupted` carries the
summary to the caller: the same command, or `upscaler rerun`, finishes the job. An
exception that escapes (a bug of ours) leaves the same rows and record, marked with it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline.errors import one_line
from pipeline.job.prepare import load_spec_model, prepare
from pipeline.job.recovery import recover
from pipeline.job.sink import RowSink
from pipeline.job.worker import Worker, build_upscaler


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


def run_local(spec, *, progress: bool = False) -> dict:
    """Upscale everything under spec.src in this process; returns the summary."""
    model = load_spec_model(spec)
    upscaler = build_upscaler(spec, model)
    p = prepare(spec, model, upscaler.info)
    recover(p.info.dst_fs, p.info.dst_root)
    worker = Worker(spec, model, run_id=p.info.run_id, config_key=p.info.config_key, name="local-0",
                    upscaler=upscaler)
    sink = RowSink(p.info, "local-0", progress=progress)
    interrupted = ""
    with sigterm_raises():
        try:
            _loop(p.todo, worker, sink, spec.batch_images)
        except KeyboardInterrupt:
            interrupted = "SIGINT"
        except _Terminated:
            interrupted = "SIGTERM"
        except Exception as error:  # our bug: the record says so, and `rerun` resumes the run
            interrupted = f"error: {type(error).__name__}: {one_line(error)}"
            raise
        finally:
            summary = sink.close(executor="local", engine=upscaler.info, interrupted=interrupted)
    if interrupted:
        raise RunInterrupted(interrupted, summary)
    return summary


def _loop(todo, worker: Worker, sink: RowSink, batch: int) -> None:
    items = iter(todo)
    with ThreadPoolExecutor(2, thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(2, thread_name_prefix="write") as writers:
        reading: deque[Future] = deque()
        writing: deque[Future] = deque()
        try:
            def refill():
                while len(reading) < 2 * batch:
                    planned = next(items, None)
                    if planned is None:
                        return
                    reading.append(readers.submit(worker.read, planned, sink.circuit))

            refill()
            while reading:
                group = []
                while reading and len(group) < batch:
                    group.append(reading.popleft().result())
                    refill()
                worker.infer(group)
                for work in group:
                    writing.append(writers.submit(worker.finish, work))
                while writing and (writing[0].done() or len(writing) > 2 * batch):
                    sink.add(writing.popleft().result())
        finally:
            for future in reading:  # not started or being read: no row, the image is redone next time
                future.cancel()
            while writing:  # being written: finish and record, so no output is left without its row
                sink.add(writing.popleft().result())
