"""Keys and locations: which keys are safe, where an output goes, when two outputs
collide, and how a source and a destination relate.

Keys are used verbatim, never percent-decoded: `a%2Fb.png` is a file of that
name, not `a/b.png` (decoding made two different sources write one output, and
renamed `x%20y.png` to `x y.png`).
"""

from __future__ import annotations

import datetime
import os
import posixpath
import string
import unicodedata
import uuid
from typing import Literal

from pipeline.store.fs import _protocols, is_local, open_location

Relation = Literal["same", "dst_inside_src", "src_inside_dst"]


class UnsafeKeyError(ValueError):
    """A key that would place an output outside the destination."""


def safe_key(key: str) -> str:
    """The key itself when, used verbatim as a relative path, it cannot escape the
    destination; else UnsafeKeyError (backslash, NUL, absolute, '..', '.' or empty segments)."""
    if "\\" in key or "\x00" in key:
        raise UnsafeKeyError(f"key {key!r} contains a backslash or NUL byte")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise UnsafeKeyError(f"key {key!r} is an absolute path")
    if any(part in ("..", ".", "") for part in key.split("/")):
        raise UnsafeKeyError(f"key {key!r} contains '..', '.' or an empty path segment")
    return key


DOUBLE_EXTENSIONS = (".nii.gz",)


def output_key(key: str, extension: str, keep_extension: bool = False) -> str:
    """Where the output of source `key` goes, relative to the destination.
    By default the source extension is replaced (photo.gif -> photo.png); with
    keep_extension it stays in the name (photo.gif -> photo.gif.png), so that
    photo.gif and photo.jpg never share one output."""
    safe = safe_key(key)
    if keep_extension:
        return safe + extension
    return split_extension(safe)[0] + extension


def split_extension(key: str) -> tuple[str, str]:
    """(stem, extension) of a key: a double extension (`.nii.gz`) whole, and a Sentinel-2
    `<product>.SAFE.zip` counting as its `<product>.SAFE` folder, so that both name one output."""
    double = next((ext for ext in DOUBLE_EXTENSIONS if len(key) > len(ext) and key[-len(ext):].lower() == ext), None)
    if double:
        return key[: -len(double)], key[-len(double):]
    return posixpath.splitext(key[:-4] if key.lower().endswith(".safe.zip") else key)


def collision_key(output_key: str, case_insensitive: bool) -> str:
    """The identity of an output on its store: two outputs with the same collision
    key overwrite each other. On a case-insensitive store that is the NFC-normalised,
    casefolded key (macOS also treats NFC and NFD spellings as one name)."""
    if not case_insensitive:
        return output_key
    return unicodedata.normalize("NFC", output_key).casefold()


_SWAP = str.maketrans(string.ascii_lowercase + string.ascii_uppercase, string.ascii_uppercase + string.ascii_lowercase)
_PROBE_CHILDREN = 100  # directory entries looked at when no ancestor name has a letter


def is_case_insensitive(fs, root: str) -> bool:
    """Whether names under `root` that differ only in case are one file, decided
    without writing anything. Object stores (s3, gcs, memory, ...) are case-sensitive.
    Locally: the nearest existing ancestor of root, then its ancestors on the same
    filesystem, then its entries, are looked up in their ASCII case-swapped spelling;
    the same inode means case-insensitive. Nothing case-swappable: False."""
    if not is_local(fs):
        return False
    path = os.path.abspath(root or os.sep)
    while not os.path.lexists(path):  # root may not exist yet: probe where it will be created
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    for candidate in _candidates(path, device):
        verdict = _swapped_is_same(candidate)
        if verdict is not None:
            return verdict
    return False


def _candidates(path: str, device: int):
    """Names whose lookup happens on the filesystem of `device`."""
    current = path
    while os.path.dirname(current) != current:
        parent = os.path.dirname(current)
        try:
            if os.stat(parent).st_dev != device:
                break
        except OSError:
            break
        yield current
        current = parent
    if os.path.isdir(path):
        try:
            with os.scandir(path) as entries:
                for index, entry in enumerate(entries):
                    if index >= _PROBE_CHILDREN:
                        break
                    yield entry.path
        except OSError:
            return


def _swapped_is_same(path: str) -> bool | None:
    name = os.path.basename(path)
    swapped = name.translate(_SWAP)
    if swapped == name:
        return None  # no ASCII letter to swap: says nothing
    try:
        original = os.lstat(path)
    except OSError:
        return None
    try:
        other = os.lstat(os.path.join(os.path.dirname(path), swapped))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    if not original.st_ino:
        return None  # a filesystem without inode numbers: cannot tell
    return (other.st_dev, other.st_ino) == (original.st_dev, original.st_ino)


def _normalised(fs, root: str) -> str:
    if is_local(fs):
        path = os.path.realpath(root or os.sep)
        return path.casefold() if is_case_insensitive(fs, path) else path
    return root.rstrip("/")


def _inside(child: str, parent: str) -> bool:
    if parent in ("", "/"):
        return child not in ("", "/")
    return child.startswith(parent.rstrip("/") + "/")


def relation(src_url: str, dst_url: str, storage_options: dict | None = None) -> Relation | None:
    """How two locations relate on one store: "same" (a run would overwrite its own
    sources), "dst_inside_src" (the source listing must leave the destination out),
    "src_inside_dst", or None (different stores or disjoint prefixes)."""
    src_fs, src_root = open_location(src_url, storage_options)
    dst_fs, dst_root = open_location(dst_url, storage_options)
    if not set(_protocols(src_fs)) & set(_protocols(dst_fs)):
        return None
    src, dst = _normalised(src_fs, src_root), _normalised(dst_fs, dst_root)
    if src == dst:
        return "same"
    if _inside(dst, src):
        return "dst_inside_src"
    if _inside(src, dst):
        return "src_inside_dst"
    return None


def new_run_id() -> str:
    """Sortable by start time, unique across machines starting in the same second."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
