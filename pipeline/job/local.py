"""`--executor local`: the whole run in this process, no Ray.

Reads and writes run in threads while the main thread keeps the model busy, with
bounded queues (at most two groups read ahead, two groups being written). On Ctrl-C or
SIGTERM the images being written are finished and recorded, the rest of the rows and
the run record (marked interrupted) are written, and `RunInterrupted` carries the
summary to the caller: the same command, or `upscaler rerun`, finishes the job. An
exception that escapes (a bug of ours) leaves the same rows and record, marked with it.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

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
    with recording(sink, executor="local", engine=upscaler.info) as outcome:
        _loop(p.todo, worker, sink, spec.batch_images)
    return outcome["summary"]


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
