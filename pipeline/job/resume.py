"""What a run has to do: the listing, minus what earlier runs already did.

An image is skipped when its latest manifest row for the same configuration
(`config_key`: the resolved output settings, see spec.py) is `ok`,
its source version is unchanged and its output still exists. The listing is
consumed in chunks, so neither it nor the to-do list has to fit in memory at
once; only the index of earlier `ok` rows is held (a few tens of bytes per image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pipeline import store
from pipeline.store import manifest

CHUNK = 10_000


# Failures that another attempt on the same bytes and key would repeat (a corrupt file,
# an image over the pixel limit, an unsafe or rejected key), as opposed to a lost worker,
# a storage outage, missing permissions or an output collision (which another file fixes).
DETERMINISTIC_ERRORS = frozenset({"ImageDecodeError", "ImageTooLargeError", "ImageEncodeError"}) | store.QUARANTINABLE
QUARANTINE_AFTER = 2


def quarantined(strike: tuple[str, int] | None, version: str, after: int = QUARANTINE_AFTER) -> bool:
    """Enough deterministic failures in a row on the bytes the source still has (a source
    replaced since is tried again)."""
    return bool(strike) and strike[0] == version and strike[1] >= after


@dataclass
class PriorIndex:
    """What earlier runs' manifests say about each image."""

    done: dict[str, tuple[str, str]]  # image_id -> (source_version, dst_uri): latest row for this config is ok
    failed: set[str] = field(default_factory=set)  # latest row for this config failed
    strikes: dict[str, tuple[str, int]] = field(default_factory=dict)  # image_id -> (source_version, deterministic failures in a row, any config)
    owners: dict[str, str] = field(default_factory=dict)  # dst_uri -> image_id whose latest row wrote it

    @classmethod
    def load(cls, dst_fs, dst_root: str, key: str) -> "PriorIndex":
        rows = manifest.rows_in_order(dst_fs, dst_root, ["image_id", "status", "source_version", "dst_uri",
                                                         "finished_at", "config_key", "error_type"])
        latest = manifest.latest_by_image(r for r in rows if r["config_key"] == key)
        strikes: dict[str, tuple[str, int]] = {}
        for row in rows:  # oldest first: deterministic failures in a row, any configuration
            image = row["image_id"]
            if row["status"] != "ok" and row["error_type"] in DETERMINISTIC_ERRORS:
                version, count = strikes.get(image, (row["source_version"], 0))
                strikes[image] = (row["source_version"], count + 1 if version == row["source_version"] else 1)
            elif row["status"] == "ok":
                strikes.pop(image, None)
        done = {k: (r["source_version"], r["dst_uri"]) for k, r in latest.items() if r["status"] == "ok"}
        failed = {k for k, r in latest.items() if r["status"] != "ok"}
        owners = {r["dst_uri"]: image for image, r in manifest.latest_by_image(rows).items()
                  if r["status"] == "ok" and r["dst_uri"]}
        return cls(done, failed, strikes, owners)


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
            if not include_quarantined and quarantined(prior.strikes.get(source.key), source.version,
                                                       quarantine_after):
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
