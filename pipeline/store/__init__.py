"""Storage through fsspec: list source images, read them, write outputs atomically.

Every location is an fsspec URL (s3://, gs://, memory://, file://) or a plain
path. Storage options (credentials, endpoints) are passed to the filesystem
and never stored anywhere else.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import random
import time
import posixpath
import tempfile
import uuid
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote

import fsspec

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".dcm")
RESERVED_PREFIXES = ("_manifest/", "_report/", "_plans/")


class UnsafeKeyError(ValueError):
    """A key that would place an output outside the destination."""


@dataclass(frozen=True)
class Source:
    uri: str  # full URL of the object, with protocol
    key: str  # path relative to the source root, '/'-separated
    size: int | None
    version: str  # ETag where the store has one, else size and mtime


def open_location(url: str, storage_options: dict | None = None):
    """(filesystem, root path) of a URL or plain path."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/") if root not in ("/", "") else root


def full_uri(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def source_version(info: dict) -> str:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or info.get("updated")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"size={info.get('size')};mtime={mtime}"


def _wanted(key: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    name = key.lower()
    if any(key.startswith(p) for p in RESERVED_PREFIXES):
        return False
    if include:
        if not any(fnmatch.fnmatch(key, pattern) for pattern in include):
            return False
    elif not name.endswith(IMAGE_EXTENSIONS):
        return False
    return not any(fnmatch.fnmatch(key, pattern) for pattern in exclude)


def list_sources(
    url: str,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    storage_options: dict | None = None,
) -> Iterator[Source]:
    """Yield the images under a prefix (recursively, directory by directory so a
    huge prefix never sits in memory at once), or the one object `url` names.
    Without --include, files with an image extension are taken (any case);
    hidden files and this tool's own _manifest/_report folders are skipped."""
    fs, root = open_location(url, storage_options)
    if fs.isfile(root):
        info = fs.info(root)
        yield Source(full_uri(fs, root), posixpath.basename(root), info.get("size"), source_version(info))
        return
    if not fs.exists(root):
        raise FileNotFoundError(f"source {url!r} does not exist")
    for directory, _dirs, files in fs.walk(root, detail=True):
        for name in sorted(files):
            info = files[name]
            path = info.get("name") or posixpath.join(directory, name)
            key = posixpath.relpath(path, root) if root else path
            if any(part.startswith(".") for part in key.split("/")):
                continue
            if _wanted(key, include, exclude):
                yield Source(full_uri(fs, path), key, info.get("size"), source_version(info))


def safe_key(key: str) -> str:
    """A relative key that cannot escape the destination, or UnsafeKeyError."""
    decoded = unquote(key)
    if "\\" in decoded or "\x00" in decoded:
        raise UnsafeKeyError(f"key {key!r} contains a backslash or NUL byte")
    if decoded.startswith("/") or (len(decoded) > 1 and decoded[1] == ":"):
        raise UnsafeKeyError(f"key {key!r} is an absolute path")
    parts = decoded.split("/")
    if any(part in ("..", ".") for part in parts) or any(part == "" for part in parts):
        raise UnsafeKeyError(f"key {key!r} contains '..', '.' or an empty path segment")
    return decoded


def output_key(key: str, extension: str) -> str:
    stem, _ = posixpath.splitext(safe_key(key))
    return stem + extension


PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, UnsafeKeyError)
# Where the network and storage clients' own exceptions live (botocore's EndpointConnectionError
# and aiohttp's ServerDisconnectedError are not OSErrors).
_CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "s3fs", "gcsfs", "adlfs", "fsspec")

# Retry schedule: up to 6 attempts, 0.25 s doubling, and no new attempt once 60 s have
# passed: the storage clients retry inside each attempt too (botocore and s3fs: ~9 s
# per call against a dead endpoint), and without a time bound the layers multiply into
# minutes per image. Module-level so that tests of an outage can shorten it.
RETRY_ATTEMPTS, RETRY_FIRST_DELAY, RETRY_SECONDS = 6, 0.25, 60.0


class StorageUnavailable(OSError):
    """Storage still failing after every retry. Rows record it as the error type;
    after a few in a row the runner stops trying (runner.Circuit)."""


def is_storage_error(error: BaseException) -> bool:
    """Transient by nature: network, timeouts, 5xx and throttling from the storage client."""
    if isinstance(error, PERMANENT_ERRORS):
        return False
    if isinstance(error, OSError):  # ConnectionError and TimeoutError included
        return True
    return any(cls.__module__.split(".")[0] in _CLIENT_MODULES for cls in type(error).__mro__[:-1])


def with_retries(action, what: str):
    """Run `action()`, retrying transient storage errors (5xx, throttling,
    connection resets, timeouts) with exponential backoff and jitter. Errors
    that retrying cannot fix (missing object, no permission, a corrupt file)
    raise at once; storage that keeps failing raises StorageUnavailable."""
    attempts, delay = RETRY_ATTEMPTS, RETRY_FIRST_DELAY
    give_up_at = time.monotonic() + RETRY_SECONDS
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:
            if not is_storage_error(error) or isinstance(error, StorageUnavailable):
                raise
            if attempt == attempts or time.monotonic() + delay > give_up_at:
                raise StorageUnavailable(f"{what}: still failing after {attempt} attempts "
                                         f"({type(error).__name__}: {error})") from error
            log.warning("%s failed (%s: %s); retry %d/%d in %.2f s", what, type(error).__name__, error,
                        attempt, attempts - 1, delay)
            time.sleep(delay * (1 + random.random() / 2))
            delay *= 2


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    def read():
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return f.read()

    return with_retries(read, f"reading {uri}")


def write_atomic(fs, path: str, data: bytes) -> None:
    """Make `path` appear only when complete. Locally: write a temporary file
    in the same directory and rename it over. Object stores: one PUT (or a
    multipart upload), which becomes visible only when it completes."""
    with_retries(lambda: _write_atomic(fs, path, data), f"writing {path}")


def _write_atomic(fs, path: str, data: bytes) -> None:
    if "file" in _protocols(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def new_run_id() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
