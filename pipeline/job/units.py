"""The Ray executor's plan: the to-do list cut into blocks and work units, as Parquet.

A *block* (one plan chunk file) is what Ray Data hands to one actor: about four per
worker, so that every worker gets work whatever the number of images. A *unit* (one row
of a chunk) is one actor call: its images are read, upscaled and written in groups of
`batch_images`, and its rows are kept as a receipt, so a restarted actor redoes at most
the units it had in flight. Units are sized so that a call's fixed costs (Ray's hand-off,
the receipt) stay small beside its work, and a restart redoes little: up to UNIT_IMAGES
images, fewer when their files reach a byte budget (a file's size is what the plan knows of
its cost), larger on GPU workers, where an image takes a hundredth of a CPU's time.

This module imports neither torch nor Ray: Ray Data's read tasks import it on every node,
and a task that imported the engine would pay torch's start-up (seconds) for a file read.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import store
from pipeline.job import resume
from pipeline.stages.list import PlannedImage

UNIT_IMAGES = 64  # per call: 64 images of 32 px take ~0.15 s, beside a few ms of fixed cost
UNIT_BYTES = {"cpu": 1 << 20, "gpu": 8 << 20}  # source bytes per call, by the workers' device

_IMAGE = pa.struct([("uri", pa.string()), ("key", pa.string()), ("size", pa.int64()),
                    ("version", pa.string()), ("output_key", pa.string()), ("refused", pa.string())])
PLAN_SCHEMA = pa.schema([("unit", pa.string()), ("images", pa.list_(_IMAGE))])


def block_images(todo: int, workers: int, batch: int) -> int:
    """Images per block: about four blocks per worker (a block goes to one actor), in whole
    groups of `batch`, at most resume.CHUNK."""
    per_block = math.ceil(todo / (4 * max(1, workers))) if todo else batch
    return min(resume.CHUNK, max(batch, math.ceil(per_block / batch) * batch))


def units(block: list[PlannedImage], batch: int, *, max_images: int = UNIT_IMAGES,
          max_bytes: int = UNIT_BYTES["cpu"]) -> Iterator[list[PlannedImage]]:
    """A block's images in plan order, cut into units: a unit closes at `max_images` images
    or once its files reach `max_bytes`, never before `batch` images (the engine's group)."""
    max_images = max(batch, max_images)
    unit, size = [], 0
    for planned in block:
        unit.append(planned)
        size += max(0, planned.source.size or 0)
        if len(unit) >= max_images or (size >= max_bytes and len(unit) >= batch):
            yield unit
            unit, size = [], 0
    if unit:
        yield unit


def unit_id(keys: Iterable[str]) -> str:
    """A unit's name from its keys: the same unit, fed again after a restart, finds its receipt."""
    return hashlib.sha256("\0".join(keys).encode()).hexdigest()[:24]


def write_plan(todo, fs, plan_dir: str, *, block: int = resume.CHUNK, batch: int = 4,
               unit_bytes: int = UNIT_BYTES["cpu"]) -> list[str]:
    """The to-do list as Parquet chunks (a block each, a row per unit) under
    DST/_plans/<run_id>/, readable by every node."""
    paths = []
    for index, chunk in enumerate(resume.chunks(todo, block)):
        if not paths:
            fs.makedirs(plan_dir, exist_ok=True)
        rows = []
        for unit in units(chunk, batch, max_bytes=unit_bytes):
            images = [{"uri": p.source.uri, "key": p.source.key, "size": p.source.size,
                       "version": p.source.version, "output_key": p.output_key, "refused": p.refused}
                      for p in unit]
            rows.append({"unit": unit_id(i["key"] for i in images), "images": images})
        path = f"{plan_dir}/chunk-{index:06d}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA), f)
        paths.append(path)
    return paths


def read_chunk(batch: pa.Table, dst: str, storage_options: dict | None) -> pa.Table:
    """A Ray Data task: the plan chunk named in `batch` (one path), a row per unit."""
    fs, _ = store.open_location(dst, storage_options)
    (path,) = batch.column("path").to_pylist()
    with fs.open(path, "rb") as f:
        return pq.read_table(f, schema=PLAN_SCHEMA)


def planned_images(images: list[dict]) -> list[PlannedImage]:
    """A unit's images, as the worker takes them."""
    return [PlannedImage(store.Source(i["uri"], i["key"], i["size"], i["version"]), i["output_key"],
                         i["refused"] or "") for i in images]
