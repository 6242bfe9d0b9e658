"""What a run has to do: the listing, minus what earlier runs already did.

An image is skipped when its latest manifest row for the same configuration
(`config_key`: model sha256, scale, tile, overlap, precision, format) is `ok`,
its source version is unchanged and its output still exists. The listing is
consumed in chunks, so neither it nor the to-do list has to fit in memory at
once; only the index of earlier `ok` rows is held (a few tens of bytes per image).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Iterable, Iterator

import fsspec
import pyarrow.compute as pc

from pipeline import manifest, storage

CHUNK = 10_000


def config_key(model_id: str, config) -> str:
    """Stable hash of the settings that change an output."""
    fields = {
        "model": model_id,
        "scale": float(config.scale) if config.scale else None,
        "tile": config.tile,
        "overlap": config.overlap,
        "precision": config.precision,
        "format": config.format,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PriorIndex:
    """Latest row per image for one configuration, from earlier runs' manifests."""

    done: dict[str, tuple[str, str]]  # image_id -> (source_version, dst_uri) of its latest row, when it is ok

    @classmethod
    def load(cls, dst_fs, dst_root: str, key: str) -> "PriorIndex":
        table = manifest.read_manifest(dst_fs, dst_root)
        if table.num_rows == 0 or "config_key" not in table.column_names:
            return cls({})
        table = table.filter(pc.equal(table["config_key"], key))
        table = table.select(["image_id", "status", "source_version", "dst_uri", "finished_at"])
        table = table.sort_by([("image_id", "ascending"), ("finished_at", "ascending")])
        latest: dict[str, tuple[str, str] | None] = {}
        for row in table.to_pylist():  # later rows overwrite earlier ones
            ok = row["status"] == "ok"
            latest[row["image_id"]] = (row["source_version"], row["dst_uri"]) if ok else None
        return cls({k: v for k, v in latest.items() if v is not None})


@dataclass
class Plan:
    todo: int = 0
    skipped: int = 0


def chunks(items: Iterable, size: int = CHUNK) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def to_do(sources: Iterable[storage.Source], prior: PriorIndex, dst_fs, force: bool, plan: Plan) -> Iterator[storage.Source]:
    """Yield the sources that need processing; count the rest in `plan`."""
    for chunk in chunks(sources):
        for source in chunk:
            previous = None if force else prior.done.get(source.key)
            if previous and previous[0] == source.version and _exists(dst_fs, previous[1]):
                plan.skipped += 1
                continue
            plan.todo += 1
            yield source


def _exists(fs, uri: str) -> bool:
    try:
        return fs.exists(fs._strip_protocol(uri))
    except OSError:
        return False


def sources_from_list(list_uri: str, src: str, storage_options: dict | None) -> Iterator[storage.Source]:
    """Sources named in a text file (one URL or key per line) or a Parquet file
    (column `uri`, `src_uri` or `key`); keys are relative to SRC."""
    fs, root = storage.open_location(src, storage_options)
    if list_uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fsspec.open(list_uri, "rb", **(storage_options or {})) as f:
            table = pq.read_table(f)
        column = next(c for c in ("uri", "src_uri", "key") if c in table.column_names)
        names = (str(v) for v in table[column].to_pylist())
    else:
        with fsspec.open(list_uri, "rt", **(storage_options or {})) as f:
            names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    for name in names:
        path = fs._strip_protocol(name) if "://" in name else posixpath.join(root, name)
        key = posixpath.relpath(path, root) if root else path
        try:
            info = fs.info(path)
            version, size = storage.source_version(info), info.get("size")
        except FileNotFoundError:
            version, size = "missing", None  # read_stage records the failure
        yield storage.Source(storage.full_uri(fs, path), key, size, version)
