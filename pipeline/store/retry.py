"""Which storage errors to retry, the retry loop, and one-line error messages.

Retrying only helps when the store itself is unwell (network, timeouts, 5xx,
throttling). A name that is too long, a refused permission or a read-only
filesystem fails the same way on every attempt: retrying it wastes a minute per
image and, worse, made the job's circuit believe storage was down.

The retry schedule lives here as module attributes (RETRY_ATTEMPTS,
RETRY_FIRST_DELAY, RETRY_SECONDS) and `with_retries` reads them, and `time`,
at call time, so tests patch `pipeline.store.retry.<name>`; `pipeline.store`
forwards reads and writes of the RETRY_* names to this module.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import time
from collections.abc import Mapping

from pipeline.errors import one_line, one_line_text  # noqa: F401  (re-exported by pipeline.store)

log = logging.getLogger("pipeline.store")

# Retry schedule: up to 6 attempts, 0.25 s doubling, and no new attempt once 60 s have
# passed: the storage clients retry inside each attempt too (botocore and s3fs: ~9 s
# per call against a dead endpoint), and without a time bound the layers multiply into
# minutes per image. Module-level so that tests of an outage can shorten it.
RETRY_ATTEMPTS, RETRY_FIRST_DELAY, RETRY_SECONDS = 6, 0.25, 60.0


class StorageUnavailable(OSError):
    """Storage still failing after every retry. Rows record it as the error type;
    after a few in a row the job stops trying (job/circuit.py). Only transient
    failures produce it."""


class PermanentStorageError(OSError):
    """The store refused the operation in a way retrying cannot fix (read-only
    filesystem, access denied by the client, missing bucket). Depends on the
    store's state, so it is not quarantined: fixing the store fixes the image."""


class KeyRejectedError(PermanentStorageError):
    """The store refused this key itself (name too long, invalid name): the same
    key fails again on every run, so the image can be quarantined."""


# Raised unchanged and never retried. FileNotFoundError and PermissionError stay
# their own types (callers catch them, manifests record "FileNotFoundError").
PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                    PermanentStorageError)

# Error type names (as manifests record them) that are properties of the key, not
# of the store's state: they fail again for the same key and source version, so
# the image may be quarantined. PermanentStorageError, PermissionError and
# FileNotFoundError are left out on purpose: permissions, buckets and objects change.
QUARANTINABLE = frozenset({"UnsafeKeyError", "KeyRejectedError"})

# errno values that no retry can fix; those in _KEY_ERRNOS are about the name itself
# (EILSEQ: macOS refusing a name that is not UTF-8). ENOENT/EACCES/EPERM arrive as
# FileNotFoundError/PermissionError (OSError maps them). s3fs turns S3's error codes
# into OSErrors too (KeyTooLongError -> ENAMETOOLONG, InvalidBucketName and many
# request errors -> EINVAL, EntityTooLarge -> EMSGSIZE, a wrong region -> EREMCHG,
# SlowDown/503 -> EBUSY, 500 -> EREMOTEIO) with the ClientError as __cause__: there
# the code decides whether the key is at fault, the errno whether to retry.
_PERMANENT_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ, errno.EROFS, errno.ENOENT, errno.EACCES,
                     errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EMSGSIZE, errno.ENOSYS,
                     getattr(errno, "EREMCHG", errno.ENOENT)}
_KEY_ERRNOS = {errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ}

# Storage clients' error codes (botocore ClientError's response["Error"]["Code"]).
_KEY_CODES = {"InvalidKey", "KeyTooLongError", "InvalidObjectName", "InvalidURI"}
_PERMANENT_CODES = _KEY_CODES | {
    "NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NoSuchVersion", "NotFound", "404",
    "AccessDenied", "AllAccessDisabled", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "AccountProblem", "InvalidBucketName", "InvalidArgument", "MethodNotAllowed", "InvalidObjectState",
}
# HTTP statuses (aiohttp .status, gcsfs .code, requests .response.status_code) that retrying cannot fix.
_PERMANENT_STATUSES = {400, 401, 403, 404, 405, 410, 414}
_KEY_STATUSES = {414}

# Where the network and storage clients' own exceptions live (botocore's EndpointConnectionError
# and aiohttp's ServerDisconnectedError are not OSErrors).
_CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "s3fs", "gcsfs", "adlfs", "fsspec")


# The clients' own "you have not configured me" errors (botocore, by class name: no import).
_CONFIGURATION_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "NoRegionError",
                                   "ProfileNotFound", "InvalidConfigError", "UnknownCredentialError"})


def _from_client(error: BaseException) -> bool:
    return any(cls.__module__.split(".")[0] in _CLIENT_MODULES for cls in type(error).__mro__[:-1])


def _client_code(error: BaseException) -> str | None:
    """botocore ClientError's error code, found by duck-typing (no botocore import)."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        details = response.get("Error")
        if isinstance(details, Mapping) and details.get("Code") is not None:
            return str(details["Code"])
    return None


def _http_status(error: BaseException) -> int | None:
    if not _from_client(error):
        return None
    response = getattr(error, "response", None)
    for value in (getattr(error, "status", None), getattr(error, "code", None),
                  getattr(response, "status_code", None)):
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def _kind(error: BaseException) -> str:
    """'key' (permanent, the key's fault), 'permanent', 'transient' or 'other'."""
    if isinstance(error, KeyRejectedError):
        return "key"
    if isinstance(error, PERMANENT_ERRORS):
        return "permanent"
    if isinstance(error, OSError):  # ConnectionError and TimeoutError included
        if error.errno not in _PERMANENT_ERRNOS:
            return "transient"
        code = _client_code(error.__cause__) if error.__cause__ is not None else None
        if code is not None:  # translated by s3fs: EINVAL also stands for a bad request or token
            return "key" if code in _KEY_CODES or error.errno == errno.ENAMETOOLONG else "permanent"
        return "key" if error.errno in _KEY_ERRNOS else "permanent"
    if type(error).__name__ in _CONFIGURATION_ERRORS and _from_client(error):
        return "permanent"  # configuration: retrying (or "once storage is back") cannot fix it
    code = _client_code(error)
    if code is not None:
        return "key" if code in _KEY_CODES else "permanent" if code in _PERMANENT_CODES else "transient"
    status = _http_status(error)
    if status is not None:
        return "key" if status in _KEY_STATUSES else "permanent" if status in _PERMANENT_STATUSES else "transient"
    return "transient" if _from_client(error) else "other"


def is_transient(error: BaseException) -> bool:
    """Worth retrying: network, timeouts, 5xx and throttling from the storage client,
    OSErrors with no errno or one not known to be permanent."""
    return _kind(error) == "transient"


# The job and CLI call it this; the circuit opens only on StorageUnavailable,
# which only transient failures produce.
is_storage_error = is_transient


def is_permanent(error: BaseException) -> bool:
    """A storage error that will fail the same way again: fail now, do not retry."""
    return _kind(error) in ("key", "permanent")


def _cause(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno in errno.errorcode:
        text = one_line_text(error.strerror or "", 200) or os.strerror(error.errno)
        if text[1:2].islower():  # "File name too long" -> "file name too long"; "NoSuchBucket: x" as it is
            text = text[0].lower() + text[1:]
        names = [errno.errorcode[error.errno]]
        if error.__cause__ is not None and _client_code(error.__cause__):
            names.append(_client_code(error.__cause__))
        return f"{text} ({', '.join(names)})"
    code = _client_code(error)
    if code is not None:
        message = one_line_text(str(error.response["Error"].get("Message") or ""), 200)
        if not message:  # "NoSuchKey" -> "no such key", "KeyTooLongError" -> "key too long", "404" -> "HTTP 404"
            message = f"HTTP {code}" if code.isdigit() else \
                re.sub(r"(?<=[a-z])(?=[A-Z])", " ", code).lower().removesuffix(" error")
        return f"{message} ({code})"  # the server's message as sent: it may name a bucket
    return one_line(error, 200)


def _shorten_names(text: str, longest: int = 80) -> str:
    """Path segments of hundreds of characters (the very names that fail) cut in the middle."""
    return re.sub(rf"[^/\s]{{{longest + 1},}}", lambda m: m[0][:longest // 2 - 1] + "…" + m[0][-(longest // 2):],
                  text)


def permanent_error(error: BaseException, what: str) -> PermanentStorageError:
    """One-line PermanentStorageError (KeyRejectedError for the key's fault) naming
    the operation, the path and the cause: 'writing /x/a…a.png: file name too long (ENAMETOOLONG)'."""
    cls = KeyRejectedError if _kind(error) == "key" else PermanentStorageError
    wrapped = cls(one_line_text(f"{_shorten_names(what)}: {_cause(error)}"))
    if isinstance(error, OSError):
        wrapped.errno = error.errno
    return wrapped


def with_retries(action, what: str):
    """Run `action()`, retrying transient storage errors (5xx, throttling,
    connection resets, timeouts) with exponential backoff and jitter. Permanent
    storage errors raise at once, as PermanentStorageError/KeyRejectedError from the
    original (FileNotFoundError, PermissionError, IsADirectoryError and
    NotADirectoryError stay as they are); errors that are not about storage (a
    corrupt file) raise unchanged; storage that keeps failing raises
    StorageUnavailable. `what` names the operation and path ("writing /x/y.png")."""
    attempts, delay = RETRY_ATTEMPTS, RETRY_FIRST_DELAY
    give_up_at = time.monotonic() + RETRY_SECONDS
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as error:
            if isinstance(error, (StorageUnavailable, *PERMANENT_ERRORS)):
                raise
            if is_permanent(error):
                raise permanent_error(error, what) from error
            if not is_transient(error):
                raise
            if attempt == attempts or time.monotonic() + delay > give_up_at:
                raise StorageUnavailable(f"{what}: still failing after {attempt} attempts "
                                         f"({type(error).__name__}: {one_line(error, 300)})") from error
            log.warning("%s failed (%s: %s); retry %d/%d in %.2f s", what, type(error).__name__, error,
                        attempt, attempts - 1, delay)
            time.sleep(delay * (1 + random.random() / 2))
            delay *= 2


