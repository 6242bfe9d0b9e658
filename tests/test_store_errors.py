"""Storage errors: permanent ones fail at once with one clear line, transient ones are
retried; which ones may be quarantined; one-line error messages; KEY=VALUE options."""

import errno
import os

import pytest

from pipeline import store
from pipeline.store import retry


@pytest.fixture
def sleeps(monkeypatch):
    delays = []
    monkeypatch.setattr(retry.time, "sleep", delays.append)
    return delays


class FakeClientError(Exception):
    """Shaped like botocore's ClientError, without importing botocore."""

    def __init__(self, code, message=""):
        super().__init__(f"An error occurred ({code}) when calling the PutObject operation: {message}")
        self.response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}}


def raising(error, times=None):
    calls = []

    def action():
        calls.append(1)
        if times is None or len(calls) <= times:
            raise error
        return "done"

    return action, calls


def test_a_name_too_long_fails_at_once_with_one_line_naming_the_cause(tmp_path, sleeps):
    fs, root = store.open_location(str(tmp_path))
    path = f"{root}/{'a' * 296}.png"
    with pytest.raises(store.PermanentStorageError, match=r"file name too long \(ENAMETOOLONG\)") as raised:
        store.write_atomic(fs, path, b"data")
    error = raised.value
    assert sleeps == []  # not retried
    assert isinstance(error, store.KeyRejectedError) and isinstance(error, OSError)
    assert error.errno == errno.ENAMETOOLONG and error.__cause__.errno == errno.ENAMETOOLONG
    message = str(error)
    assert message.startswith(f"writing {root}/aaa") and "…" in message and "\n" not in message
    assert len(message) < 200
    assert type(error).__name__ in store.QUARANTINABLE  # the same key fails again: quarantine it
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_name_that_fits_is_not_refused_because_of_its_temporary_file(tmp_path):
    fs, root = store.open_location(str(tmp_path))
    name = "b" * 251 + ".png"  # 255 bytes: the longest name allowed
    store.write_atomic(fs, f"{root}/{name}", b"data")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_client_access_denied_is_permanent_and_not_quarantined(sleeps):
    denied = FakeClientError("AccessDenied", "Access Denied")
    assert retry.is_permanent(denied) and not store.is_transient(denied) and not store.is_storage_error(denied)
    action, calls = raising(denied)
    with pytest.raises(store.PermanentStorageError) as raised:
        store.with_retries(action, "writing bucket/out/x.png")
    assert str(raised.value) == "writing bucket/out/x.png: Access Denied (AccessDenied)"
    assert raised.value.__cause__ is denied and len(calls) == 1 and sleeps == []
    assert not isinstance(raised.value, store.KeyRejectedError)
    assert type(raised.value).__name__ not in store.QUARANTINABLE  # depends on the bucket policy, not the key


@pytest.mark.parametrize("code, key_fault", [("NoSuchKey", False), ("NoSuchBucket", False), ("AccessDenied", False),
                                             ("InvalidBucketName", False), ("InvalidKey", True),
                                             ("KeyTooLongError", True)])
def test_client_error_codes_that_retrying_cannot_fix(code, key_fault, sleeps):
    action, calls = raising(FakeClientError(code))
    with pytest.raises(store.PermanentStorageError, match=rf"\({code}\)") as raised:
        store.with_retries(action, "reading s3://b/k.png")
    assert isinstance(raised.value, store.KeyRejectedError) is key_fault
    assert len(calls) == 1 and sleeps == []


@pytest.mark.parametrize("code", ["SlowDown", "InternalError", "ServiceUnavailable", "503", "RequestTimeout"])
def test_client_throttling_and_server_errors_are_transient(code, sleeps):
    error = FakeClientError(code)
    assert store.is_transient(error) and store.is_storage_error(error) and not retry.is_permanent(error)
    action, calls = raising(error, times=2)
    assert store.with_retries(action, "reading s3://b/k.png") == "done"
    assert len(calls) == 3 and len(sleeps) == 2


def test_a_connection_reset_is_retried(sleeps):
    assert store.is_transient(ConnectionResetError("reset by peer"))
    action, calls = raising(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), times=2)
    assert store.with_retries(action, "reading x") == "done"
    assert len(calls) == 3 and len(sleeps) == 2


@pytest.mark.parametrize("number, key_fault", [(errno.ENAMETOOLONG, True), (errno.EINVAL, True),
                                               (errno.EROFS, False)])
def test_permanent_errnos_are_raised_at_once(number, key_fault, sleeps):
    action, calls = raising(OSError(number, os.strerror(number)))
    with pytest.raises(store.PermanentStorageError, match=rf"\({errno.errorcode[number]}\)$") as raised:
        store.with_retries(action, "writing /x/y.png")
    assert isinstance(raised.value, store.KeyRejectedError) is key_fault
    assert raised.value.errno == number and len(calls) == 1 and sleeps == []


@pytest.mark.parametrize("error", [FileNotFoundError(errno.ENOENT, "No such file"), PermissionError(errno.EACCES, "no"),
                                   OSError(errno.EPERM, "Operation not permitted")])
def test_not_found_and_permission_errors_stay_their_own_type_and_are_not_retried(error, sleeps):
    assert not store.is_transient(error) and retry.is_permanent(error)
    action, calls = raising(error)
    with pytest.raises(type(error)) as raised:
        store.with_retries(action, "reading x")
    assert raised.value is error and len(calls) == 1 and sleeps == []
    assert type(error).__name__ not in store.QUARANTINABLE


@pytest.mark.parametrize("error", [OSError("no errno"), OSError(errno.EIO, "I/O error"), TimeoutError("timed out"),
                                   ConnectionRefusedError(errno.ECONNREFUSED, "refused")])
def test_other_os_errors_are_transient_and_end_as_storage_unavailable(error, sleeps, monkeypatch):
    monkeypatch.setattr(retry, "RETRY_ATTEMPTS", 3)
    action, calls = raising(error)
    with pytest.raises(store.StorageUnavailable, match="still failing after 3 attempts") as raised:
        store.with_retries(action, "reading x")
    assert raised.value.__cause__ is error and len(calls) == 3 and len(sleeps) == 2


def test_errors_that_are_not_about_storage_pass_through_untouched(sleeps):
    for error in [ValueError("corrupt"), store.UnsafeKeyError("../x"), KeyError("k")]:
        assert not store.is_transient(error) and not retry.is_permanent(error)
        action, calls = raising(error)
        with pytest.raises(type(error)) as raised:
            store.with_retries(action, "decoding x")
        assert raised.value is error and len(calls) == 1
    assert sleeps == []


def test_a_permanent_error_is_wrapped_once_through_nested_retries(sleeps):
    inner, _ = raising(OSError(errno.EROFS, "Read-only file system"))
    with pytest.raises(store.PermanentStorageError) as raised:
        store.with_retries(lambda: store.with_retries(inner, "writing /ro/a.png"), "uploading the batch")
    assert str(raised.value) == "writing /ro/a.png: read-only file system (EROFS)"
    assert isinstance(raised.value.__cause__, OSError) and not isinstance(raised.value.__cause__,
                                                                          store.PermanentStorageError)


def test_quarantinable_names_are_properties_of_the_key():
    assert store.QUARANTINABLE == {"UnsafeKeyError", "KeyRejectedError"}


def test_one_line_error_messages():
    assert store.one_line(ValueError("first line\n  second line")) == "first line second line"
    assert store.one_line(ValueError("\n\n  spaced \t  out  \nrest")) == "spaced out rest"
    assert store.one_line(ValueError("bad file\nTraceback (most recent call last):\n  File ...")) == "bad file"
    assert store.one_line(RuntimeError()) == "RuntimeError"
    assert store.one_line(MemoryError()) == "out of memory"
    cut = store.one_line(ValueError("x" * 1000), limit=50)
    assert len(cut) == 50 and cut.endswith("…") and cut.startswith("x" * 49)
    assert len(store.one_line(ValueError("y" * 1000))) == 500
    assert store.one_line(ValueError("short"), limit=50) == "short"


def test_one_line_keeps_numpys_allocation_message():
    try:
        from numpy._core._exceptions import _ArrayMemoryError
    except ImportError:  # numpy 1.x
        from numpy.core._exceptions import _ArrayMemoryError
    import numpy as np

    error = _ArrayMemoryError((100000, 100000, 3), np.dtype("float32"))
    assert isinstance(error, MemoryError)
    line = store.one_line(error)
    assert line.startswith("Unable to allocate 112. GiB for an array with shape (100000, 100000, 3)"), line


@pytest.mark.parametrize("text, expected", [
    ("endpoint_url=http://127.0.0.1:9000", ("endpoint_url", "http://127.0.0.1:9000")),
    ("anon=true", ("anon", True)),
    ("max_concurrency=8", ("max_concurrency", 8)),
    ('config_kwargs={"retries": {"max_attempts": 1}}', ("config_kwargs", {"retries": {"max_attempts": 1}})),
    ("token=a=b==", ("token", "a=b==")),
    ("region=", ("region", "")),
    ('name="quoted"', ("name", "quoted")),
])
def test_parse_key_value(text, expected):
    assert store.parse_key_value(text) == expected


@pytest.mark.parametrize("text", ["no-equals-sign", "=value", ""])
def test_parse_key_value_refuses_text_without_a_key(text):
    with pytest.raises(ValueError, match="^expected KEY=VALUE$"):
        store.parse_key_value(text)


def _translated_by_s3fs(code):
    """What s3fs raises for a ClientError: an OSError whose __cause__ is the ClientError."""
    from s3fs.errors import translate_boto_error

    return translate_boto_error(FakeClientError(code, f"server says {code}"))


@pytest.mark.parametrize("code, kind", [("KeyTooLongError", "key"), ("InvalidURI", "key"),
                                        ("InvalidBucketName", "permanent"), ("InvalidRequest", "permanent"),
                                        ("TokenRefreshRequired", "permanent"), ("EntityTooLarge", "permanent"),
                                        ("SlowDown", "transient"), ("InternalError", "transient"),
                                        ("503", "transient")])
def test_client_errors_translated_by_s3fs_keep_their_meaning(code, kind, sleeps):
    error = _translated_by_s3fs(code)
    assert isinstance(error, OSError)
    if kind == "transient":
        assert store.is_transient(error)
        return
    action, _ = raising(error)
    with pytest.raises(store.PermanentStorageError, match=rf"\(E[A-Z]+, {code}\)$") as raised:
        store.with_retries(action, "writing bucket/dst/k.png")
    # an EINVAL from a bad request or an expired token is not the key's fault: not quarantined
    assert isinstance(raised.value, store.KeyRejectedError) is (kind == "key") and sleeps == []


def test_missing_credentials_are_a_configuration_error_not_an_outage():
    from botocore.exceptions import NoCredentialsError

    error = NoCredentialsError()
    assert store.is_permanent(error) and not store.is_transient(error)
