"""API keys: a JSON file of names, permissions, limits and the sha256 of each key.

A key is shown once, when `upscaler serve keys add` makes it; the file holds only its
hash, so a copy of the file (a backup, a Kubernetes Secret) lets nobody in. The server
re-reads the file whenever it changes (its inode, size or mtime), so `keys revoke`
takes effect on the next request, without a restart. A file that cannot be read any
more lets nobody in either (fail closed) until it can.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass, field

PERMISSIONS = ("upscale", "jobs")
PREFIX = "ups_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Key:
    name: str
    sha256: str
    permissions: tuple = ("upscale",)
    rate_per_minute: float | None = None  # requests that start work (upscale, job creation)
    concurrency: int | None = None  # of those, at once
    created_at: str = ""

    def allows(self, permission: str) -> bool:
        return permission in self.permissions

    def public(self) -> dict:
        """What `keys list` prints and `whoami` says: everything but the hash."""
        record = asdict(self)
        record.pop("sha256")
        record["permissions"] = list(self.permissions)
        return record


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)  # 32 random bytes


def read_keys(path: str) -> list[Key]:
    """The keys in `path` (an absent file has none). ValueError when it is not a keys file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable keys file ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f"{path}: not a keys file (expected {{\"keys\": [...]}})")
    try:
        return [Key(**{**k, "permissions": tuple(k.get("permissions", ("upscale",)))}) for k in data["keys"]]
    except TypeError as error:
        raise ValueError(f"{path}: a key record has unexpected fields ({error})") from None


def _write_keys(path: str, keys: list[Key]) -> None:
    """Atomically (a reader sees the old file or the new one), readable by the owner only."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    records = [{**asdict(k), "permissions": list(k.permissions)} for k in keys]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".keys-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"keys": records}, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_key(path: str, name: str, *, jobs: bool = False, rate_per_minute: float | None = None,
            concurrency: int | None = None) -> str:
    """Store a new key's hash under `name`; returns the key (the only time it exists in clear)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"key name {name!r}: use letters, digits and _.@- (up to 64, starting with a letter or digit)")
    if rate_per_minute is not None and rate_per_minute <= 0:
        raise ValueError(f"--rate must be positive, not {rate_per_minute}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, not {concurrency}")
    keys = read_keys(path)
    if any(k.name == name for k in keys):
        raise ValueError(f"a key named {name!r} exists in {path}; revoke it first or pick another name")
    token = new_token()
    keys.append(Key(name=name, sha256=digest(token), permissions=("upscale", "jobs") if jobs else ("upscale",),
                    rate_per_minute=rate_per_minute, concurrency=concurrency,
                    created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
    _write_keys(path, keys)
    return token


def revoke_key(path: str, name: str) -> None:
    keys = read_keys(path)
    if not any(k.name == name for k in keys):
        known = ", ".join(k.name for k in keys) or "none"
        raise ValueError(f"no key named {name!r} in {path} (keys: {known})")
    _write_keys(path, [k for k in keys if k.name != name])


@dataclass
class KeyStore:
    """The server's view of the keys file, re-read when the file changes."""

    path: str
    _keys: list = field(default_factory=list)
    _stamp: tuple | None = None
    _broken: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self._keys = read_keys(self.path)  # a broken file at start-up is the operator's error, said at once
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._keys, self._broken = read_keys(self.path), ""
            except ValueError as error:
                self._keys, self._broken = [], str(error)
                log.error("keys file unreadable, refusing every key until it is fixed: %s", error)
            self._stamp = stamp

    def __len__(self) -> int:
        self._refresh()
        return len(self._keys)

    def verify(self, token: str) -> Key | None:
        """The key whose hash matches `token`, compared in constant time with every key."""
        self._refresh()
        presented = digest(token)
        found = None
        for key in self._keys:
            if hmac.compare_digest(presented, key.sha256):
                found = key
        return found
