"""Storage through fsspec: list source images, read them, write outputs atomically.

The code lives in small modules; this package re-exports all of it, so callers
keep writing `from pipeline import store; store.open_location(...)`:

- fs: open_location, full_uri, is_local, list_sources, object_at, read_bytes, write_atomic, new_temporary, source_at,
  source_version, Source
- keys: safe_key, output_key, split_extension, collision_key, is_case_insensitive, relation, new_run_id, UnsafeKeyError
- retry: with_retries, is_transient (is_storage_error), is_permanent, StorageUnavailable,
  PermanentStorageError, KeyRejectedError, QUARANTINABLE, one_line
- options: parse_key_value
(manifest and spool are submodules too, imported by name: `from pipeline.store import manifest`.)

The retry schedule (RETRY_ATTEMPTS, RETRY_FIRST_DELAY, RETRY_SECONDS) lives in, and is
read from, `pipeline.store.retry`: set it there (tests of an outage shorten it).
"""

from __future__ import annotations

from pipeline.store.fs import (IMAGE_EXTENSIONS, RESERVED_PREFIXES, Source, full_uri, is_local, list_sources,
                               new_temporary, object_at, open_location, read_bytes, source_at, source_version,
                               write_atomic)
from pipeline.store.keys import (UnsafeKeyError, collision_key, is_case_insensitive, new_run_id, output_key,
                                 relation, safe_key, split_extension)
from pipeline.store.options import parse_key_value
from pipeline.store.retry import (PERMANENT_ERRORS, QUARANTINABLE, KeyRejectedError,
                                  PermanentStorageError, StorageUnavailable, is_permanent, is_storage_error,
                                  is_transient, one_line, with_retries)

__all__ = [
    "IMAGE_EXTENSIONS", "RESERVED_PREFIXES", "Source", "full_uri", "is_local", "list_sources", "open_location", "read_bytes",
    "new_temporary", "object_at", "source_at", "source_version", "write_atomic",
    "UnsafeKeyError", "collision_key", "is_case_insensitive", "new_run_id", "output_key", "relation", "safe_key", "split_extension",
    "parse_key_value",
    "PERMANENT_ERRORS", "QUARANTINABLE", "KeyRejectedError", "PermanentStorageError", "StorageUnavailable",
    "is_permanent", "is_storage_error", "is_transient", "one_line", "with_retries",
]
