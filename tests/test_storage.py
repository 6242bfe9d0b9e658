"""Storage: safe keys, output keys and collisions, locations, atomic writes, retries of transient errors, listing."""

import io
import os

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from pipeline import store
from pipeline.store import keys, retry


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
    monkeypatch.setattr(retry.time, "sleep", lambda s: None)
    FlakyMemory().pipe("/flaky/a.bin", b"payload")
    FlakyMemory.failures = 2
    assert store.read_bytes("flaky:///flaky/a.bin") == b"payload"
    assert FlakyMemory.failures == 0


def test_storage_that_stays_down_raises_after_the_last_attempt(monkeypatch):
    delays = []
    monkeypatch.setattr(retry.time, "sleep", delays.append)
    FlakyMemory().pipe("/flaky/b.bin", b"payload")
    FlakyMemory.failures = 10
    with pytest.raises(store.StorageUnavailable, match="still failing after 6 attempts") as raised:
        store.read_bytes("flaky:///flaky/b.bin")
    assert isinstance(raised.value.__cause__, ConnectionResetError)
    assert len(delays) == 5 and all(a < b for a, b in zip(delays, delays[1:]))  # exponential backoff
    FlakyMemory.failures = 0


def test_retries_stop_when_their_time_budget_is_spent(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(retry.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(retry, "RETRY_SECONDS", 1.0)  # 0.25 + 0.5 fit, the 1 s wait does not
    FlakyMemory().pipe("/flaky/c.bin", b"payload")
    FlakyMemory.failures = 10
    with pytest.raises(store.StorageUnavailable, match="after 3 attempts"):
        store.read_bytes("flaky:///flaky/c.bin")
    FlakyMemory.failures = 0


def test_a_corrupt_file_is_not_retried_as_if_storage_were_down(monkeypatch):
    delays = []
    monkeypatch.setattr(retry.time, "sleep", delays.append)
    with pytest.raises(ValueError):
        store.with_retries(lambda: int("not a number"), "parsing")
    assert delays == []


def test_missing_object_is_not_retried(monkeypatch):
    delays = []
    monkeypatch.setattr(retry.time, "sleep", delays.append)
    with pytest.raises(FileNotFoundError):
        store.read_bytes("memory:///nothing/here.png")
    assert delays == []


@pytest.mark.parametrize("key", ["../escape.png", "a/../../b.png", "/etc/passwd", "a\\\\..\\\\b.png",
                                 "a//b.png", "C:/x.png", "a/./b.png", "a/", "x\x00.png", ""])
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


def test_local_outputs_get_the_permissions_of_a_plain_write_not_a_private_temporary_files(tmp_path):
    """0666 less the umask (0644 under the usual 022), as `cp` or a plain write would give: the team
    sharing an archive reads the outputs (a mkstemp file is 0600, and the rename keeps that)."""
    old = os.umask(0o027)
    try:
        fs, root = store.open_location(str(tmp_path))
        store.write_atomic(fs, f"{root}/y.png", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "y.png").stat().st_mode & 0o777 == 0o640


def test_listing_is_recursive_skips_hidden_and_own_folders_and_honours_globs(tmp_path):
    for name in ["a.png", "sub/b.JPG", "sub/deeper/c.tif", ".hidden.png", "_manifest/x.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    keys = sorted(s.key for s in store.list_sources(str(tmp_path)))
    assert keys == ["a.png", "sub/b.JPG", "sub/deeper/c.tif"]
    assert [s.key for s in store.list_sources(str(tmp_path), include=("sub/*",), exclude=("*.tif",))] == ["sub/b.JPG"]
    (single,) = store.list_sources(str(tmp_path / "a.png"))
    assert single.key == "a.png" and single.version.startswith("size=1")


def test_keys_are_used_verbatim_never_percent_decoded(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ["a%2Fb.png", "a/b.png", "x%20y.png", "x y.png", "%2e%2e/z.png"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode())
    sources = sorted(store.list_sources(str(src)), key=lambda s: s.key)
    outputs = [store.output_key(s.key, ".png") for s in sources]
    assert outputs == ["%2e%2e/z.png", "a%2Fb.png", "a/b.png", "x y.png", "x%20y.png"]  # distinct, as named
    dst_fs, dst_root = store.open_location(str(dst))
    for source, key in zip(sources, outputs):
        store.write_atomic(dst_fs, f"{dst_root}/{key}", store.read_bytes(source.uri))
    for key in outputs:
        assert (dst / key).read_bytes() == key.encode()  # each output holds its own source
    assert sorted(p.name for p in dst.iterdir()) == ["%2e%2e", "a", "a%2Fb.png", "x y.png", "x%20y.png"]


def test_output_key_can_keep_the_source_extension_so_one_stem_never_shares_an_output():
    assert store.output_key("dir/photo.gif", ".png") == "dir/photo.png"
    assert store.output_key("dir/photo.gif", ".png", keep_extension=True) == "dir/photo.gif.png"
    kept = {store.output_key(k, ".png", keep_extension=True) for k in ["p.gif", "p.jpg", "p.png", "p"]}
    assert kept == {"p.gif.png", "p.jpg.png", "p.png.png", "p.png"} and len(kept) == 4
    with pytest.raises(store.UnsafeKeyError):
        store.output_key("../p.gif", ".png", keep_extension=True)


def test_collision_keys_fold_case_only_on_a_case_insensitive_store():
    assert store.collision_key("A/Photo.PNG", case_insensitive=False) == "A/Photo.PNG"
    assert store.collision_key("A/Photo.PNG", True) == store.collision_key("a/photo.png", True)
    assert store.collision_key("Straße.png", True) == store.collision_key("STRASSE.png", True)
    assert store.collision_key("e\u0301.png", True) == store.collision_key("\u00c9.png", True)  # NFD and NFC


def _tree(path):
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path) for n in dirs + files)


def test_case_sensitivity_is_probed_without_writing_anything(tmp_path, monkeypatch):
    (tmp_path / "Existing").mkdir()
    root = tmp_path / "Existing" / "not" / "yet"
    before = _tree(tmp_path)
    fs, path = store.open_location(str(root))
    assert store.is_case_insensitive(fs, path) is False  # Linux: case-sensitive
    assert _tree(tmp_path) == before and not root.exists()  # nothing written, root not created
    for url in ["memory://Bucket/Out", "s3://bucket/Out"]:
        assert store.is_case_insensitive(store.open_location(url, {"anon": True})[0], "Bucket/Out") is False

    real_lstat = os.lstat

    def case_insensitive_lstat(p):  # a filesystem where the other spelling finds the same file
        try:
            return real_lstat(p)
        except FileNotFoundError:
            return real_lstat(os.path.join(os.path.dirname(p), os.path.basename(p).swapcase()))

    monkeypatch.setattr(keys.os, "lstat", case_insensitive_lstat)
    assert store.is_case_insensitive(fs, path) is True
    assert _tree(tmp_path) == before and not root.exists()


def test_relation_of_source_and_destination(tmp_path):
    (tmp_path / "src" / "inner").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "src")
    src = str(tmp_path / "src")
    assert store.relation(src, src + "/") == "same"
    assert store.relation(src, f"file://{src}") == "same"
    assert store.relation(src, str(tmp_path / "link")) == "same"  # through a symlink
    assert store.relation(src, f"{src}/inner") == "dst_inside_src"
    assert store.relation(src, f"{src}/not-yet/out") == "dst_inside_src"
    assert store.relation(f"{src}/inner", src) == "src_inside_dst"
    assert store.relation(src, str(tmp_path / "other")) is None
    assert store.relation(src, src + "-out") is None  # a prefix of the name is not inside
    assert store.relation("memory://b/in", "memory://b/in/out") == "dst_inside_src"
    assert store.relation("memory://b/in", "memory://b/in") == "same"
    assert store.relation("memory://b/in", f"file://{src}") is None  # different stores
    assert store.relation("s3://bucket/in", "s3://bucket/in/out", {"anon": True}) == "dst_inside_src"
    assert store.relation("s3://bucket/in", "s3://bucket/input", {"anon": True}) is None


def test_listing_leaves_out_a_destination_inside_the_source(tmp_path):
    nest = tmp_path / "nest"
    for name in ["k1.png", "up/k1.png", "up/deeper/k2.png", "upper/k3.png"]:
        (nest / name).parent.mkdir(parents=True, exist_ok=True)
        (nest / name).write_bytes(b"x")
    keys_listed = sorted(s.key for s in store.list_sources(str(nest), exclude_prefix=str(nest / "up")))
    assert keys_listed == ["k1.png", "upper/k3.png"]
    assert sorted(s.key for s in store.list_sources(str(nest), exclude_prefix=f"file://{nest}/up/")) == keys_listed
    assert len(list(store.list_sources(str(nest), exclude_prefix=str(tmp_path / "elsewhere")))) == 4


def test_listing_of_an_object_store_leaves_out_the_excluded_prefix():
    fs = MemoryFileSystem()
    for name in ["k1.png", "up/k1.png", "upper/k3.png"]:
        fs.pipe(f"/excl/nest/{name}", b"x")
    listed = sorted(s.key for s in store.list_sources("memory://excl/nest", exclude_prefix="memory://excl/nest/up"))
    assert listed == ["k1.png", "upper/k3.png"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_names_with_a_double_colon_are_read_and_written_as_they_are(where, tmp_path, request):
    """fsspec.open reads '::' as a chain of filesystems: `ab::c.png` was read as `ab` (FileNotFoundError)."""
    import numpy as np
    from PIL import Image

    from pipeline.job.local import run_local
    from pipeline.spec import RunSpec

    options, root = ({}, str(tmp_path)) if where == "local" else request.getfixturevalue("s3")
    fs, base = store.open_location(root, options)
    fs.makedirs(f"{base}/src", exist_ok=True)
    for name in ("ab::c.png", "plain.png"):
        buffer = io.BytesIO()
        Image.fromarray(np.full((6, 5, 3), 90, np.uint8)).save(buffer, format="PNG")
        fs.pipe_file(f"{base}/src/{name}", buffer.getvalue())
    summary = run_local(RunSpec(src=f"{root}/src", dst=f"{root}/dst", model="bicubic", scale=2,
                                storage_options=options))
    assert (summary["ok"], summary["failures"]) == (2, [])
    out = Image.open(io.BytesIO(fs.cat_file(f"{base}/dst/ab::c.png")))
    assert out.size == (10, 12)
