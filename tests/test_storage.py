"""Storage: safe keys, atomic writes, retries of transient errors, listing."""

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import store


class FlakyMemory(MemoryFileSystem):
    """A memory filesystem whose first `failures` reads raise a connection reset."""

    protocol = "flaky"
    failures = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.replace("flaky://", "memory://", 1))

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode and FlakyMemory.failures > 0:
            FlakyMemory.failures -= 1
            raise ConnectionResetError("connection reset by peer")
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("flaky", FlakyMemory, clobber=True)


def test_transient_read_errors_are_retried_until_they_pass(monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    FlakyMemory().pipe("/flaky/a.bin", b"payload")
    FlakyMemory.failures = 2
    assert store.read_bytes("flaky:///flaky/a.bin") == b"payload"
    assert FlakyMemory.failures == 0


def test_storage_that_stays_down_raises_after_the_last_attempt(monkeypatch):
    delays = []
    monkeypatch.setattr(store.time, "sleep", delays.append)
    FlakyMemory().pipe("/flaky/b.bin", b"payload")
    FlakyMemory.failures = 10
    with pytest.raises(store.StorageUnavailable, match="still failing after 6 attempts") as raised:
        store.read_bytes("flaky:///flaky/b.bin")
    assert isinstance(raised.value.__cause__, ConnectionResetError)
    assert len(delays) == 5 and all(a < b for a, b in zip(delays, delays[1:]))  # exponential backoff
    FlakyMemory.failures = 0


def test_retries_stop_when_their_time_budget_is_spent(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(store.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(store.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(storage, "RETRY_SECONDS", 1.0)  # 0.25 + 0.5 fit, the 1 s wait does not
    FlakyMemory().pipe("/flaky/c.bin", b"payload")
    FlakyMemory.failures = 10
    with pytest.raises(store.StorageUnavailable, match="after 3 attempts"):
        store.read_bytes("flaky:///flaky/c.bin")
    FlakyMemory.failures = 0


def test_a_corrupt_file_is_not_retried_as_if_storage_were_down(monkeypatch):
    delays = []
    monkeypatch.setattr(store.time, "sleep", delays.append)
    with pytest.raises(ValueError):
        store.with_retries(lambda: int("not a number"), "parsing")
    assert delays == []


def test_missing_object_is_not_retried(monkeypatch):
    delays = []
    monkeypatch.setattr(store.time, "sleep", delays.append)
    with pytest.raises(FileNotFoundError):
        store.read_bytes("memory:///nothing/here.png")
    assert delays == []


@pytest.mark.parametrize("key", ["../escape.png", "a/../../b.png", "/etc/passwd", "a\\\\..\\\\b.png",
                                 "%2e%2e/x.png", "a//b.png", "C:/x.png"])
def test_keys_that_could_escape_the_destination_are_refused(key):
    with pytest.raises(store.UnsafeKeyError):
        store.output_key(key, ".png")


def test_output_key_keeps_the_relative_path_and_changes_the_extension():
    assert store.output_key("a/b c/ünï.JPG", ".png") == "a/b c/ünï.png"


def test_local_atomic_write_leaves_no_temporary_file(tmp_path):
    fs, root = store.open_location(str(tmp_path))
    store.write_atomic(fs, f"{root}/x/y.png", b"data")
    assert (tmp_path / "x" / "y.png").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["y.png"]


def test_listing_is_recursive_skips_hidden_and_own_folders_and_honours_globs(tmp_path):
    for name in ["a.png", "sub/b.JPG", "sub/deeper/c.tif", ".hidden.png", "_manifest/x.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    keys = sorted(s.key for s in store.list_sources(str(tmp_path)))
    assert keys == ["a.png", "sub/b.JPG", "sub/deeper/c.tif"]
    assert [s.key for s in store.list_sources(str(tmp_path), include=("sub/*",), exclude=("*.tif",))] == ["sub/b.JPG"]
    (single,) = store.list_sources(str(tmp_path / "a.png"))
    assert single.key == "a.png" and single.version.startswith("size=1")
