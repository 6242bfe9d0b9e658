"""`--executor local`: the whole run in this process, no Ray.

Reads and writes run in helper threads while the main thread keeps the model busy, with
bounded queues (at most two groups read ahead, two groups being written). The helpers
share one pool sized to the machine: a core for the model's thread, the others for reads
and writes (at most four). Helpers overlap waiting, not computing: where the model runs
on this CPU and the files are local there is nothing to wait for (the forward pass takes
every core), and a helper only contends for the cores and the GIL, so there the stages
run in order in the main thread (on two cores: 1,000 images of 32 px with bicubic 1.25 ->
1.07 s, of 64 px with `edsr-x2` 14.4 -> 13.7 s, medians of 5 alternated runs). On Ctrl-C or
SIGTERM the images being written are finished and recorded, the rest of the rows and
the run record (marked interrupted) are written, and `RunInterrupted` carries the
summary to the caller: the same command, or `upscaler rerun`, finishes the job. An
exception that escapes (a bug of ours) leaves the same rows and record, marked with it.
"""

from __future__ import annotations

import os
from collections import deque
from itertools import islice
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline import store
from pipeline.job.prepare import load_spec_model, prepare
from pipeline.job.recovery import recover
from pipeline.job.sink import RowSink, RunInterrupted, recording  # noqa: F401  (callers catch RunInterrupted here)
from pipeline.job.worker import Worker, build_upscaler


def run_local(spec, *, progress: bool = False) -> dict:
    """Upscale everything under spec.src in this process; returns the summary."""
    model = load_spec_model(spec)
    upscaler = build_upscaler(spec, model)
    p = prepare(spec, model, upscaler.info)
    recover(p.info.dst_fs, p.info.dst_root)
    worker = Worker(spec, model, run_id=p.info.run_id, config_key=p.info.config_key, name="local-0",
                    upscaler=upscaler)
    sink = RowSink(p.info, "local-0", progress=progress, total=len(p.todo))
    waits = upscaler.device.type != "cpu" or not all(
        store.is_local(store.open_location(url, spec.storage_options)[0]) for url in (spec.src, spec.dst))
    with recording(sink, executor="local", engine=upscaler.info) as outcome:
        _loop(p.todo, worker, sink, spec.batch_images, helper_threads() if waits else 0)
    return outcome["summary"]


def helper_threads() -> int:
    """Threads for reads and writes beside the model's: the machine's other cores, one to four."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(4, cores - 1))


class InOrder:
    """An executor without threads: `submit` runs the call at once and returns its finished future."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # raised where the loop takes the result, as from a thread
            future.set_exception(exc)
        return future


def _loop(todo, worker: Worker, sink: RowSink, batch: int, threads: int) -> None:
    groups = _groups(todo, batch)
    with (ThreadPoolExecutor(threads, thread_name_prefix="io") if threads else InOrder()) as helpers:
        reading: deque[tuple[Future, list]] = deque()  # each a group being read, and the group
        writing: deque[Future] = deque()  # each a group's (rows, error)
        try:
            def refill():
                while len(reading) < 2:
                    group = next(groups, None)
                    if group is None:
                        return
                    reading.append((helpers.submit(_read, worker, group, sink.circuit), group))

            refill()
            while reading:
                group = _take(reading.popleft(), worker, sink.circuit)
                refill()
                worker.infer(group)
                writing.append(helpers.submit(_finish, worker, group))
                while writing and (writing[0].done() or len(writing) > 2):
                    _record(writing.popleft().result(), sink)
        finally:
            for future, _ in reading:  # not started or being read: no row, the images are redone next time
                future.cancel()
            while writing:  # being written: finish and record, so no output is left without its row
                _record(writing.popleft().result(), sink)


def _groups(todo, batch: int):
    items = iter(todo)
    while group := list(islice(items, batch)):
        yield group


def _take(read: tuple[Future, list], worker: Worker, circuit) -> list:
    """A group's ImageWork list: read by a helper, or here when no helper has begun it. The
    model's thread does not wait idle behind work it can do itself (on small images reading
    and writing take longer than the model). Only reads: they write nothing, so an interrupt
    in one leaves nothing behind."""
    future, group = read
    return _read(worker, group, circuit) if future.cancel() else future.result()


def _read(worker: Worker, group: list, circuit) -> list:
    return [worker.read(planned, circuit) for planned in group]


def _finish(worker: Worker, group: list) -> tuple[list, BaseException | None]:
    """The group's rows; an exception that escapes a stage (a bug) is kept until the others are finished
    and recorded too."""
    rows, error = [], None
    for work in group:
        try:
            rows.append(worker.finish(work))
        except BaseException as exc:
            error = error or exc
    return rows, error


def _record(finished: tuple[list, BaseException | None], sink: RowSink) -> None:
    rows, error = finished
    for row in rows:
        sink.add(row)
    if error is not None:
        raise error
