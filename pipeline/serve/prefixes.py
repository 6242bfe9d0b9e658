"""Where a job may read and write: only under one of the server's `--allow-prefix`es.

A client's location is refused (403) when it has a `..` segment, a protocol or bucket
other than an allowed prefix's, a chained URL (`simplecache::s3://...`), or is outside
every prefix (compared segment by segment, so `/data/in` does not allow `/data/input`).
Local paths are compared after resolving symlinks, so a link under an allowed folder
pointing elsewhere is outside too.
"""

from __future__ import annotations

import os
import posixpath

from pipeline.serve.errors import ApiError


def _split(url: str) -> tuple[str, str]:
    """(protocol, path) with "file" for plain paths; the path without a trailing slash."""
    protocol, sep, rest = url.partition("://")
    if not sep:
        protocol, rest = "file", url
    protocol = protocol.lower()
    if protocol in ("file", "local"):
        return "file", os.path.realpath(os.path.abspath(rest))
    return protocol, rest.strip("/")


def check_location(url: str, prefixes: tuple, what: str) -> str:
    """`url` if it is under an allowed prefix, else ApiError 403 saying why."""
    if not prefixes:
        raise ApiError(403, "jobs are disabled on this server (it was started without --allow-prefix)")
    if not isinstance(url, str) or not url or len(url) > 2048 or "\x00" in url:
        raise ApiError(400, f"{what} must be a non-empty URL or path")
    if "::" in url:
        raise ApiError(403, f"{what}: chained URLs are not accepted")
    raw_path = url.partition("://")[2] or url
    if ".." in raw_path.replace("\\", "/").split("/"):
        raise ApiError(403, f"{what}: a '..' segment is not allowed")
    protocol, path = _split(url)
    for prefix in prefixes:
        p_protocol, p_path = _split(prefix)
        if protocol != p_protocol:
            continue
        if path == p_path or path.startswith(p_path.rstrip("/") + "/") or p_path in ("", "/"):
            return url
    allowed = ", ".join(prefixes)
    raise ApiError(403, f"{what} {url!r} is outside the allowed prefixes ({allowed})")


def normalise_prefix(prefix: str) -> str:
    """An operator's prefix, refused when it could not contain anything safely."""
    if ".." in prefix.replace("\\", "/").split("/") or "::" in prefix:
        raise ValueError(f"--allow-prefix {prefix!r}: no '..' or chained URLs")
    protocol, path = _split(prefix)
    if protocol != "file" and not path:
        raise ValueError(f"--allow-prefix {prefix!r}: name a bucket (and folder), not a whole protocol")
    return prefix if protocol != "file" else posixpath.normpath(os.path.abspath(prefix))
