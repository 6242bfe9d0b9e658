"""Storage through fsspec: list source images, read them, write outputs atomically.

The code lives in small modules; this package re-exports all of it, so callers
keep writing `from pipeline import store; store.open_location(...)`:

- fs: open_location, full_uri, list_sources, read_bytes, write_atomic, source_version, Source
- keys: safe_key, output_key, collision_key, is_case_insensitive, relation, new_run_id, UnsafeKeyError
- retry: with_retries, is_transient (is_storage_error), is_permanent, StorageUnavailable,
  PermanentStorageError, KeyRejectedError, QUARANTINABLE, one_line, the RETRY_* schedule
- options: parse_key_value
(manifest and spool are submodules too, imported by name: `from pipeline.store import manifest`.)

The retry schedule belongs to `pipeline.store.retry`; `store.RETRY_ATTEMPTS` (and the
other RETRY_* names) read and write that module's value, so patching either works.
`store.time` is the time module itself, so patching `store.time.sleep` reaches the retries.
"""

from __future__ import annotations

import sys
import time  # noqa: F401  (store.time: tests patch store.time.sleep / .monotonic)
import types

from pipeline.store import retry
from pipeline.store.fs import (IMAGE_EXTENSIONS, RESERVED_PREFIXES, Source, _protocols, _wanted, _write_atomic,
                               full_uri, list_sources, open_location, read_bytes, source_version, write_atomic)
from pipeline.store.keys import (UnsafeKeyError, collision_key, is_case_insensitive, new_run_id, output_key,
                                 relation, safe_key)
from pipeline.store.options import parse_key_value
from pipeline.store.retry import (_CLIENT_MODULES, PERMANENT_ERRORS, QUARANTINABLE, KeyRejectedError,
                                  PermanentStorageError, StorageUnavailable, is_permanent, is_storage_error,
                                  is_transient, log, one_line, with_retries)

__all__ = [
    "IMAGE_EXTENSIONS", "RESERVED_PREFIXES", "Source", "full_uri", "list_sources", "open_location", "read_bytes",
    "source_version", "write_atomic",
    "UnsafeKeyError", "collision_key", "is_case_insensitive", "new_run_id", "output_key", "relation", "safe_key",
    "parse_key_value",
    "PERMANENT_ERRORS", "QUARANTINABLE", "KeyRejectedError", "PermanentStorageError", "StorageUnavailable",
    "is_permanent", "is_storage_error", "is_transient", "one_line", "with_retries",
    "RETRY_ATTEMPTS", "RETRY_FIRST_DELAY", "RETRY_SECONDS",
]

def _forwarded(name: str) -> property:
    return property(lambda self: getattr(retry, name), lambda self, value: setattr(retry, name, value),
                    doc=f"pipeline.store.retry.{name}")


class _StoreModule(types.ModuleType):
    """Forwards the RETRY_* settings to pipeline.store.retry, which with_retries reads:
    a copy here would make `monkeypatch.setattr(store, "RETRY_ATTEMPTS", 2)` a silent no-op."""

    RETRY_ATTEMPTS = _forwarded("RETRY_ATTEMPTS")
    RETRY_FIRST_DELAY = _forwarded("RETRY_FIRST_DELAY")
    RETRY_SECONDS = _forwarded("RETRY_SECONDS")


sys.modules[__name__].__class__ = _StoreModule
