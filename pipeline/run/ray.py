"""The Ray executor: the only module that imports Ray.

The driver streams the to-do listing into Ray Data in chunks; a pool of
actors, each holding one loaded model (on a GPU where there is one), reads,
upscales and writes its images itself through fsspec, and returns only the
manifest rows. Pixels never travel through Ray's object store.

Faults: actors restart when their process dies (max_restarts), and Ray Data
re-executes the batch they held; an output is written under its final key
atomically and the driver records a row only when a batch's result arrives,
so a retried image is written twice at most, recorded once.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import pyarrow as pa

from pipeline.store import manifest
from pipeline.run import resume as plan_mod
from pipeline.runner import (Circuit, RowSink, RunConfig, base_row, finish_run, finish_stage, infer_stage, prepare,
                             read_stage, Reference)

log = logging.getLogger(__name__)

_SOURCE_SCHEMA = pa.schema([("uri", pa.string()), ("key", pa.string()), ("size", pa.int64()),
                            ("version", pa.string())])


@dataclass
class RayOptions:
    address: str | None = None  # join this cluster; None = RAY_ADDRESS or an embedded local Ray
    workers: int | None = None  # actors; default: GPUs, or CPUs // 2 (at least 1)
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None  # default 1 where GPUs exist, else 0


def _init_ray(options: RayOptions):
    try:
        import ray
    except ImportError as error:
        raise ValueError("Ray is not installed: pip install 'pipeline[ray]', or use --executor local") from error

    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # embedded, sized to the machine
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
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
    return workers, cpus_per, gpus_per


class UpscaleWorker:
    """A Ray Data actor: one model, many batches of sources -> manifest rows."""

    def __init__(self, config: RunConfig, run_id: str, config_key: str, cpus: float):
        import socket

        import torch

        from pipeline.inference.engine import Upscaler
        from pipeline.models import load_model
        from pipeline.runner import _model_scale_hint
        from pipeline import store

        torch.set_num_threads(max(1, int(cpus)))
        self.config = config
        model = load_model(config.model, scale=_model_scale_hint(config), storage_options=config.storage_options)
        self.upscaler = Upscaler(model, device=config.device, precision=config.precision,
                                 tile=config.tile, overlap=config.overlap)
        self.dst_fs, self.dst_root = store.open_location(config.dst, config.storage_options)
        self.reference = Reference(config.reference, config.storage_options) if config.reference else None
        worker = f"{socket.gethostname()}-{os.getpid()}"
        self.template = base_row(config, run_id, model, self.upscaler, worker=worker, config_key=config_key)
        self.circuit = Circuit(config.storage_failures)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline import store

        sources = [store.Source(r["uri"], r["key"], r["size"], r["version"]) for r in batch.to_pylist()]
        group = [self.circuit.skip(s, self.template) if self.circuit.open else read_stage(s, self.config, self.template)
                 for s in sources]
        infer_stage(group, self.upscaler, self.config.scale, self.config.time_limit)
        rows = [finish_stage(w, self.config, self.dst_fs, self.dst_root, self.reference) for w in group]
        for row in rows:
            self.circuit.record(row)
        return pa.Table.from_pylist([{c: r.get(c) for c in manifest.COLUMNS} for r in rows], schema=manifest.SCHEMA)


def write_plan(p, plan_dir: str) -> list[str]:
    """Stream the to-do listing into Parquet chunks under DST/_plans/<run_id>/:
    the driver never holds more than one chunk, and every node can read them."""
    import pyarrow.parquet as pq

    paths = []
    p.dst_fs.makedirs(plan_dir, exist_ok=True)
    for index, chunk in enumerate(plan_mod.chunks(p.sources, plan_mod.CHUNK)):
        table = pa.Table.from_pylist([{"uri": s.uri, "key": s.key, "size": s.size, "version": s.version}
                                      for s in chunk], schema=_SOURCE_SCHEMA)
        path = f"{plan_dir}/chunk-{index:06d}.parquet"
        with p.dst_fs.open(path, "wb") as f:
            pq.write_table(table, f)
        paths.append(path)
    return paths


def run_ray(config: RunConfig, options: RayOptions | None = None, *, progress: bool = False) -> dict:
    from pipeline import store

    if config.dst.startswith("memory://") or config.src.startswith("memory://"):
        raise ValueError("memory:// lives inside one process; Ray workers cannot see it: use --executor local")
    options = options or RayOptions()
    ray = _init_ray(options)
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    p = prepare(config)
    workers, cpus_per, gpus_per = _resources(ray, options)
    sink = RowSink(p, "driver", progress=progress)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images, not blocks
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    # Ray 2.60 warns about map_batches(max_restarts=...); the pin in pyproject stays below its removal.
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
    plan_dir = f"{p.dst_root}/_plans/{p.run_id}"
    try:
        paths = write_plan(p, plan_dir)
        if paths:
            dataset = ray.data.read_parquet(paths, filesystem=PyFileSystem(FSSpecHandler(p.dst_fs)), num_cpus=0.25)
            results = dataset.map_batches(
                UpscaleWorker,
                fn_constructor_kwargs={"config": config, "run_id": p.run_id, "config_key": p.config_key,
                                       "cpus": cpus_per},
                batch_size=config.batch_images,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cpus_per,
                num_gpus=gpus_per,
                max_restarts=-1,
                max_task_retries=-1,
            )
            for result in results.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in result.to_pylist():
                    sink.add(row)
    finally:
        try:
            if p.dst_fs.exists(plan_dir):
                p.dst_fs.rm(plan_dir, recursive=True)
        except Exception as error:  # DST down: the plan is only a cache of the listing
            log.warning("could not remove %s: %s", plan_dir, error)
    engine = {"workers": workers, "cpus_per_worker": cpus_per, "gpus_per_worker": gpus_per,
              "device": config.device, "precision": config.precision, "tile": config.tile, "overlap": config.overlap}
    return finish_run(p, sink, executor="ray", engine=engine)
