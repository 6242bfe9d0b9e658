"""The Ray executor: the only batch-path module that imports Ray.

The driver writes the checked to-do list into Parquet plan chunks under DST/_plans/
(job/units.py: a block per chunk, a work unit per row); Ray Data feeds the units to a pool
of actors, each holding one `Worker` (one loaded model, on a GPU where there is one), which
reads, upscales and writes its images itself through fsspec and returns only the manifest
rows. Pixels never travel through Ray's object store.

Faults: actors restart when their process dies (max_restarts), and Ray Data re-executes
the block they held, whose finished units are answered from their receipts; an output
is written under its final key atomically and the driver records a row only when a
block's result arrives, so a retried image is written twice at most, recorded once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass

import pyarrow as pa

from pipeline import store
from pipeline.job import units
from pipeline.job.prepare import load_spec_model, prepare
from pipeline.job.recovery import recover, remove_if_empty
from pipeline.store.manifest import to_table, ManifestRow
from pipeline.job.sink import RowSink, recording
from pipeline.job.worker import Worker, build_upscaler

log = logging.getLogger(__name__)


@dataclass
class RayOptions:
    address: str | None = None  # join this cluster; None = RAY_ADDRESS or an embedded local Ray
    workers: int | None = None  # actors; default: GPUs, or CPUs // 2 (at least 1)
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None  # default 1 where GPUs exist, else 0
    stall_timeout: float = 300.0  # seconds without a finished batch before the run is ended; 0: wait forever


class StalledError(RuntimeError):
    """No batch finished for `stall_timeout` seconds: what Ray was waiting for is in the message."""


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Refuse at once an address where nothing listens (Ray itself retries for minutes)."""
    import socket

    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected HOST:PORT of a Ray cluster's GCS (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ValueError(f"--address {address}: nothing answers there ({error.strerror or error}); "
                         "is the Ray cluster up, and is this its GCS address (port 6379 by default)?") from None


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Join `address` (or RAY_ADDRESS), else start an embedded Ray; the one place Ray starts."""
    try:
        import ray
    except ImportError as error:
        raise ValueError("Ray is not installed: pip install 'pipeline[ray]', or use --executor local") from error
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # the console is for our progress
        if address:
            check_address(address)
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, **quiet)
    return ray


def _resources(ray, options: RayOptions) -> tuple[int, float, float]:
    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 1), cluster.get("GPU", 0)
    gpus_per = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    if options.workers:
        workers = options.workers
    elif gpus_per:
        workers = max(1, int(gpus // gpus_per))
    else:
        workers = max(1, int(cpus // 2))
    # Leave a whole CPU for Ray Data's own tasks: actors that take every CPU starve them and the job hangs.
    cpus_per = options.cpus_per_worker if options.cpus_per_worker is not None else max(0.25, (cpus - 1) / workers)
    check_fits(ray, workers, cpus_per, gpus_per)
    return workers, cpus_per, gpus_per


def check_fits(ray, workers: int, cpus_per: float, gpus_per: float) -> None:
    """Refuse, with the numbers, actors that no node can hold (Ray would wait for them forever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    places = sum(min(int(n.get("CPU", 0) // cpus_per) if cpus_per else workers,
                     int(n.get("GPU", 0) // gpus_per) if gpus_per else workers) for n in nodes)
    if places >= workers:
        return
    gpus = sum(n.get("GPU", 0) for n in nodes)
    if gpus_per and not gpus:
        raise ValueError(f"--gpus-per-worker {gpus_per:g}: the cluster has no GPU; use --gpus-per-worker 0 "
                         "(or leave it out) to run on CPUs")
    per_node = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
    raise ValueError(f"{workers} worker(s) of {cpus_per:g} CPU and {gpus_per:g} GPU each do not fit the cluster's "
                     f"nodes ({per_node}): at most {places} can be placed; lower --workers, --cpus-per-worker or "
                     "--gpus-per-worker")


def _engine_info(spec) -> dict:
    """The engine settings as a worker resolves them (device, precision, tile, overlap)."""
    return build_upscaler(spec, load_spec_model(spec)).info


def _worker_engine(ray, spec, model, cpus_per: float, gpus_per: float) -> dict:
    """What the workers' engine will be: asked of a task on a GPU worker when they have
    GPUs (the card decides the precision); CPU workers resolve as this driver's CPU does,
    with the model the driver has already loaded."""
    if gpus_per:
        return ray.get(ray.remote(_engine_info).options(num_cpus=cpus_per, num_gpus=gpus_per).remote(spec))
    return build_upscaler(dataclasses.replace(spec, device="cpu") if spec.device == "auto" else spec, model).info


class UpscaleWorker:
    """A Ray Data actor: one Worker, many work units (job/units.py) -> manifest rows.

    Each finished unit leaves a receipt (its rows) under the run's plan folder. When an
    actor dies, Ray Data gives its whole block to the restarted actor; the units with a
    receipt are answered from it, so only the units in flight (two at most) are done again."""

    def __init__(self, spec, run_id: str, config_key: str, cpus: float, plan_dir: str):
        import torch

        torch.set_num_threads(max(1, int(cpus)))
        self.worker = Worker(spec, load_spec_model(spec), run_id=run_id, config_key=config_key,
                             name=f"{socket.gethostname()}-{os.getpid()}")
        self.plan_dir, self.receipts = plan_dir, f"{plan_dir}/receipts"

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([self._unit(row["unit"], row["images"]) for row in batch.to_pylist()])

    def _unit(self, name: str, images: list[dict]) -> pa.Table:
        import pyarrow.parquet as pq

        fs = self.worker.dst_fs
        receipt = f"{self.receipts}/{name}.parquet"
        try:
            with fs.open(receipt, "rb") as f:
                return pq.read_table(f)
        except FileNotFoundError:
            pass
        table = to_table(self.worker.process(units.planned_images(images)))
        try:
            if not fs.exists(self.plan_dir):  # the run has ended (Ctrl-C) and removed it: leave no litter
                return table
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            store.write_atomic(fs, receipt, sink.getvalue().to_pybytes())
        except Exception as error:  # a receipt only saves work after a crash; the rows still go back
            log.warning("could not write the unit receipt %s: %s", receipt, error)
        return table


def run_ray(spec, options: RayOptions | None = None, *, progress: bool = False) -> dict:
    if spec.dst.startswith("memory://") or spec.src.startswith("memory://"):
        raise ValueError("memory:// lives inside one process; Ray workers cannot see it: use --executor local")
    options = options or RayOptions()
    model = load_spec_model(spec)  # an unknown or unreadable model is refused before Ray starts
    ray = init_ray(options.address)
    import ray.data

    workers, cpus_per, gpus_per = _resources(ray, options)
    engine = _worker_engine(ray, spec, model, cpus_per, gpus_per)
    p = prepare(spec, model, engine)
    info = p.info
    recover(info.dst_fs, info.dst_root)
    sink = RowSink(info, "driver", progress=progress, total=len(p.todo))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images, not blocks
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Ray 2.60 warns about map_batches(max_restarts=...); the pin in pyproject stays below its removal.
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
    plan_dir = f"{info.dst_root}/_plans/{info.run_id}"
    engine_record = {"workers": workers, "cpus_per_worker": cpus_per, "gpus_per_worker": gpus_per, **engine}
    with recording(sink, executor="ray", engine=engine_record,
                   before_close=lambda: _remove_plan(info.dst_fs, plan_dir, info.dst_root)) as outcome:
        paths = units.write_plan(p.todo, info.dst_fs, plan_dir, batch=spec.batch_images,
                                 block=units.block_images(len(p.todo), workers, spec.batch_images),
                                 unit_bytes=units.UNIT_BYTES["gpu" if gpus_per else "cpu"])
        if paths:
            # Not ray.data.read_parquet: its file listing is a task of 1 CPU that Ray Data does not let
            # us size, and on nodes the actors have filled to 0.5 CPU it never starts (the run stalled).
            dataset = ray.data.from_items([{"path": p} for p in paths]).map_batches(
                units.read_chunk, fn_kwargs={"dst": spec.dst, "storage_options": spec.storage_options},
                batch_size=1, batch_format="pyarrow", num_cpus=0.25)
            results = dataset.map_batches(
                UpscaleWorker,
                fn_constructor_kwargs={"spec": spec, "run_id": info.run_id, "config_key": info.config_key,
                                       "cpus": cpus_per, "plan_dir": plan_dir},
                batch_size=1,  # a unit: a row of the plan
                batch_format="pyarrow",
                # Two units in each actor at once: one is read and written while the other is
                # inferred (Worker.infer lets one group at a time through the model). No more
                # blocks queued at an actor than it runs, so the actor up first does not take
                # the blocks of those still loading their model.
                compute=ray.data.ActorPoolStrategy(size=workers, max_concurrent_calls_per_actor=2,
                                                   max_tasks_in_flight_per_actor=2,
                                                   enable_true_multi_threading=True),
                num_cpus=cpus_per,
                num_gpus=gpus_per,
                max_restarts=-1,
                max_task_retries=-1,
            )
            with _Watchdog(options.stall_timeout, ray) as watchdog, _without_lines(RAY_DATA_NOISE):
                for result in results.iter_batches(batch_format="pyarrow", batch_size=None):
                    watchdog.beat()
                    for row in result.to_pylist():
                        sink.add(ManifestRow.from_dict(row))
    return outcome["summary"]


# Ray Data passes its actors' code through the object store, so Ray core logs this at error level for
# every actor pool (ray-project/ray#57733, open). It does not apply here: the driver holds that object
# for the whole run, and tests/test_distributed.py kills an actor and sees it restart and finish.
RAY_DATA_NOISE = b"has constructor arguments in the object store and max_restarts > 0"


@contextlib.contextmanager
def _without_lines(marker: bytes):
    """Copy this process's stderr (fd 2: Ray core writes there from C++) through a pipe,
    dropping the lines that contain `marker`. Everything else passes unchanged, as it comes."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield  # no real stderr (an embedding host): nothing to filter
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if marker not in line)
            if pending and not pending.startswith(b"["):  # a progress bar's \r update: pass it now
                kept, pending = kept + pending, b""
            if kept:
                os.write(saved, kept)
        if pending and marker not in pending:
            os.write(saved, pending)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last writer in this process: the thread sees the end
        thread.join(timeout=5)
        os.close(saved)
        if not thread.is_alive():
            os.close(read_end)


class _Watchdog:
    """Ends a run that makes no progress: when no batch has arrived for `timeout` seconds it
    sends the driver's main thread a signal of its own (SIGUSR1, handled only while the
    watchdog runs), whose handler raises StalledError there: the main thread then leaves Ray
    Data's iterator the normal way (so its executor shuts down), even from a blocking call.
    Not SIGINT: a job started in the background by a shell ignores SIGINT, and so would the
    watchdog. Only in the main thread (a library caller in another thread gets no watchdog)."""

    def __init__(self, timeout: float, ray):
        self.timeout, self.ray = timeout, ray
        self.last, self.message = time.monotonic(), ""
        self.stopped = threading.Event()
        self._lock = threading.Lock()  # no signal once __exit__ has begun restoring the handler
        self.active = (bool(timeout) and threading.current_thread() is threading.main_thread()
                       and hasattr(signal, "pthread_kill"))
        self._previous = None

    def __enter__(self) -> "_Watchdog":
        if self.active:
            self._previous = signal.signal(signal.SIGUSR1, self._stall)
            threading.Thread(target=self._watch, name="stall-watchdog", daemon=True).start()
        return self

    def beat(self) -> None:
        self.last = time.monotonic()

    def _stall(self, signum, frame):
        raise StalledError(self.message)

    def _watch(self) -> None:
        while not self.stopped.wait(min(1.0, self.timeout)):
            if time.monotonic() - self.last > self.timeout:
                self.message = (f"no image finished for {self.timeout:g} s (--stall-timeout); Ray is waiting with "
                                f"{_available(self.ray)} free: the workers may not fit, or a model load or storage "
                                "call hangs. The rows so far are written; the same command resumes.")
                with self._lock:
                    if not self.stopped.is_set():
                        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return

    def __exit__(self, kind, error, traceback) -> bool:
        with self._lock:
            self.stopped.set()
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)
        return False


def _available(ray) -> str:
    free = ray.available_resources()
    return ", ".join(f"{free.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def _remove_plan(fs, plan_dir: str, dst_root: str) -> None:
    try:
        if fs.exists(plan_dir):
            fs.rm(plan_dir, recursive=True)
        remove_if_empty(fs, f"{dst_root}/_plans")
    except Exception as error:  # DST down: the plan is only a cache of the listing; the next run removes it
        log.warning("could not remove %s: %s", plan_dir, error)
