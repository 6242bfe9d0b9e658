"""Filesystem access through fsspec: open locations, list sources, read, write atomically.

Every location is an fsspec URL (s3://, gs://, memory://, file://) or a plain
path. Storage options (credentials, endpoints) are passed to the filesystem
and never stored anywhere else.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import secrets
from dataclasses import dataclass
from typing import Iterator

import fsspec

from pipeline.store.retry import with_retries

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz",
                    ".jp2", ".safe.zip", ".safe")
PRODUCT_FOLDERS = (".safe",)  # a Sentinel-2 product folder is one source, not its 13+ files
RESERVED_PREFIXES = ("_manifest/", "_report/", "_plans/", "_stac/")


@dataclass(frozen=True, slots=True)  # slots: a million of them are held while planning
class Source:
    uri: str  # full URL of the object, with protocol
    key: str  # path relative to the source root, '/'-separated, verbatim (never percent-decoded)
    size: int | None
    version: str  # ETag where the store has one, else size and mtime


def open_location(url: str, storage_options: dict | None = None):
    """(filesystem, root path) of a URL or plain path."""
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/") if root not in ("/", "") else root


def full_uri(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def source_version(info: dict) -> str:
    """What changes when the object changes: the ETag, else size and mtime."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or info.get("updated")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"size={info.get('size')};mtime={mtime}"


def _protocols(fs) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def is_local(fs) -> bool:
    """A local filesystem: where a rename makes a file appear atomically."""
    return "file" in _protocols(fs)


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


def _relative_prefix(fs, root: str, path: str) -> str | None:
    """`path` as a key prefix relative to `root` ('' when it is root itself), or None
    when it is not under root. Local paths compare with symlinks resolved."""
    path = fs._strip_protocol(path).rstrip("/") or "/"
    if is_local(fs):
        for resolve in (os.path.abspath, os.path.realpath):  # as spelled, then with symlinks resolved
            relative = os.path.relpath(resolve(path), resolve(root or "/")).replace(os.sep, "/")
            if relative == ".":
                return ""
            if relative != ".." and not relative.startswith("../"):
                return relative
        return None
    if path == root:
        return ""
    if not root:
        return path
    return path[len(root) + 1:] if path.startswith(root.rstrip("/") + "/") else None


def list_sources(
    url: str,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    storage_options: dict | None = None,
    exclude_prefix: str | None = None,
) -> Iterator[Source]:
    """Yield the images under a prefix (recursively, directory by directory so a
    huge prefix never sits in memory at once), or the one object `url` names.
    Without --include, files with an image extension are taken (any case);
    hidden files and this tool's own _manifest/_report folders are skipped.
    `exclude_prefix` (a path or URL on the same store, e.g. a destination inside
    the source) is never listed, so a run does not read back its own outputs."""
    fs, root = open_location(url, storage_options)
    if fs.isfile(root) or (root.lower().endswith(PRODUCT_FOLDERS) and fs.isdir(root)):
        yield source_at(fs, root, posixpath.basename(root))
        return
    if not fs.exists(root):
        raise FileNotFoundError(f"source {url!r} does not exist")
    skip = _relative_prefix(fs, root, exclude_prefix) if exclude_prefix else None
    if skip == "":
        return  # the whole source is excluded
    for directory, dirs, files in fs.walk(root, detail=True):
        if skip is not None:  # prune: never even list the excluded folder
            for name in list(dirs):
                if _relative_key(root, posixpath.join(directory, name)) == skip:
                    del dirs[name]
        products = [name for name in sorted(dirs) if name.lower().endswith(PRODUCT_FOLDERS)]
        for name in products:
            del dirs[name]  # one source: never walked into
        for name in sorted(files) + products:
            info = files.get(name) or {}
            path = info.get("name") or posixpath.join(directory, name)
            key = _relative_key(root, path)
            if any(part.startswith(".") for part in key.split("/")):
                continue
            if skip is not None and (key == skip or key.startswith(skip + "/")):
                continue
            if _wanted(key, include, exclude):
                yield _product(fs, path, key) if name not in files else Source(
                    full_uri(fs, path), key, info.get("size"), source_version(info))


def source_at(fs, path: str, key: str) -> Source:
    """The source at `path` (a file, or a product folder as one source); FileNotFoundError if none."""
    if path.lower().endswith(PRODUCT_FOLDERS) and fs.isdir(path):
        return _product(fs, path, key)
    info = fs.info(path)
    return Source(full_uri(fs, path), key, info.get("size"), source_version(info))


def _product(fs, path: str, key: str) -> Source:
    """A product folder as one source: its size the sum of its files', its version a hash of
    their names and versions (any file replaced is a new version)."""
    import hashlib

    files = with_retries(lambda: fs.find(path, detail=True), f"listing {path}")
    digest = hashlib.sha256("\n".join(f"{name}={source_version(info)}" for name, info in sorted(files.items()))
                            .encode()).hexdigest()[:32]
    return Source(full_uri(fs, path), key, sum(info.get("size") or 0 for info in files.values()), f"files={digest}")


def _relative_key(root: str, path: str) -> str:
    return posixpath.relpath(path, root) if root else path


def object_at(uri: str, storage_options: dict | None = None):
    """(filesystem, path) of the one object a full URI names. Not fsspec.open or url_to_fs:
    they read '::' as a chain of filesystems, so `photos/ab::c.png` was opened as `photos/ab`
    (a FileNotFoundError for a file that is there); here '::' is part of the name."""
    protocol, _ = fsspec.core.split_protocol(uri)
    fs = fsspec.filesystem(protocol or "file", **(storage_options or {}))
    return fs, fs._strip_protocol(uri)


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    fs, path = object_at(uri, storage_options)

    def read():
        with fs.open(path, "rb") as f:
            return f.read()

    return with_retries(read, f"reading {uri}")


def write_atomic(fs, path: str, data: bytes) -> None:
    """Make `path` appear only when complete. Locally: write a temporary file
    in the same directory and rename it over. Object stores: one PUT (or a
    multipart upload), which becomes visible only when it completes."""
    with_retries(lambda: _write_atomic(fs, path, data), f"writing {path}")


def new_temporary(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """(descriptor, path) of a new file in `directory`, to be renamed over an output: created
    with the permissions a plain write gives it (0666 less the umask). mkstemp's 0600, which
    the rename keeps, would hide every output from the rest of a team sharing the archive."""
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def _write_atomic(fs, path: str, data: bytes) -> None:
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        # The temporary name carries at most 100 bytes of the final one, so a name
        # that fits (255 bytes) is not refused because its temporary name is longer.
        hint = os.fsdecode(os.fsencode(os.path.basename(path))[:100])
        fd, tmp = new_temporary(directory, f".{hint}.", ".tmp")
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
