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
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import fsspec
import pyarrow.compute as pc

from pipeline import store
from pipeline.store import manifest

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
    # Raster settings change outputs too; added only when not the default, so keys made
    # before they existed stay valid.
    for name, default in (("band_mode", "rgb+gray"), ("radiometric", "auto")):
        if getattr(config, name, default) != default:
            fields[name] = getattr(config, name)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# Failures that another attempt on the same bytes would repeat (a corrupt file,
# an image over the pixel limit, an unsafe key), as opposed to a lost worker or
# a storage outage.
DETERMINISTIC_ERRORS = frozenset({"ImageDecodeError", "ImageTooLargeError", "ImageEncodeError", "UnsafeKeyError"})
QUARANTINE_AFTER = 2


@dataclass
class PriorIndex:
    """What earlier runs' manifests say about each image."""

    done: dict[str, tuple[str, str]]  # image_id -> (source_version, dst_uri): latest row for this config is ok
    failed: set[str] = field(default_factory=set)  # latest row for this config failed
    strikes: dict[str, tuple[str, int]] = field(default_factory=dict)  # image_id -> (source_version, deterministic failures in a row, any config)

    @classmethod
    def load(cls, dst_fs, dst_root: str, key: str) -> "PriorIndex":
        table = manifest.read_manifest(dst_fs, dst_root)
        if table.num_rows == 0 or "config_key" not in table.column_names:
            return cls({})
        table = table.select(["image_id", "status", "source_version", "dst_uri", "finished_at", "config_key",
                              "error_type"])
        table = table.sort_by([("finished_at", "ascending")])
        latest: dict[str, tuple[str, str] | None] = {}
        strikes: dict[str, tuple[str, int]] = {}
        for row in table.to_pylist():  # later rows overwrite earlier ones
            image = row["image_id"]
            if row["config_key"] == key:
                latest[image] = (row["source_version"], row["dst_uri"]) if row["status"] == "ok" else None
            if row["status"] != "ok" and row["error_type"] in DETERMINISTIC_ERRORS:
                version, count = strikes.get(image, (row["source_version"], 0))
                strikes[image] = (row["source_version"], count + 1 if version == row["source_version"] else 1)
            elif row["status"] == "ok":
                strikes.pop(image, None)
        done = {k: v for k, v in latest.items() if v is not None}
        failed = {k for k, v in latest.items() if v is None}
        return cls(done, failed, strikes)


@dataclass
class Plan:
    todo: int = 0
    skipped: int = 0  # done by an earlier run with the same configuration
    retried: int = 0  # failed last time, tried again
    quarantined: int = 0  # failed the same deterministic way QUARANTINE_AFTER times: left out


def chunks(items: Iterable, size: int = CHUNK) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def to_do(sources: Iterable[store.Source], prior: PriorIndex, dst_fs, force: bool, plan: Plan, *,
          include_quarantined: bool = False, quarantine_after: int = QUARANTINE_AFTER,
          limit: int | None = None, sample: int | None = None, seed: int = 0) -> Iterator[store.Source]:
    """Yield the sources that need processing; count the rest in `plan`.
    `limit` takes the first N to do, `sample` a uniform random N (pilot runs)."""
    stream = _filter(sources, prior, dst_fs, force, plan, include_quarantined, quarantine_after)
    if sample:
        stream = iter(_reservoir(stream, sample, seed))
    for index, source in enumerate(stream):
        if limit is not None and index >= limit:
            break
        plan.todo += 1
        yield source


def _filter(sources, prior, dst_fs, force, plan, include_quarantined, quarantine_after):
    for chunk in chunks(sources):
        for source in chunk:
            previous = None if force else prior.done.get(source.key)
            if previous and previous[0] == source.version and _exists(dst_fs, previous[1]):
                plan.skipped += 1
                continue
            strike = prior.strikes.get(source.key)
            if (not include_quarantined and strike and strike[0] == source.version
                    and strike[1] >= quarantine_after):
                plan.quarantined += 1
                continue
            if source.key in prior.failed:
                plan.retried += 1
            yield source


def _reservoir(stream, size: int, seed: int) -> list:
    """A uniform sample of `size` items from a stream of unknown length, in listing order."""
    import random

    rng, kept = random.Random(seed), []
    for index, item in enumerate(stream):
        if index < size:
            kept.append((index, item))
        else:
            slot = rng.randint(0, index)
            if slot < size:
                kept[slot] = (index, item)
    return [item for _, item in sorted(kept, key=lambda pair: pair[0])]


def _exists(fs, uri: str) -> bool:
    try:
        return fs.exists(fs._strip_protocol(uri))
    except OSError:
        return False


def sources_from_list(list_uri: str, src: str, storage_options: dict | None) -> Iterator[store.Source]:
    """Sources named in a text file (one URL or key per line) or a Parquet file
    (column `uri`, `src_uri` or `key`); keys are relative to SRC."""
    fs, root = store.open_location(src, storage_options)
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
            version, size = store.source_version(info), info.get("size")
        except FileNotFoundError:
            version, size = "missing", None  # read_stage records the failure
        yield store.Source(store.full_uri(fs, path), key, size, version)
