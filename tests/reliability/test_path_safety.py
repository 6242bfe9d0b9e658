"""Object keys can never make the job write outside DST: on S3 and on the local filesystem.
Keys are used verbatim: a percent sign is part of the name, never an escape."""

import io
import json

import pyarrow.parquet as pq
from PIL import Image

from pipeline.cli import main


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


HOSTILE_KEYS = ["a/../../escape.png", "a/..%2F..%2Fencoded.png", "a\\..\\..\\backslash.png", "a//double.png",
                "a/./dot.png"]


def test_traversal_keys_on_s3_are_refused_and_nothing_lands_outside_dst(s3, capsys):
    import s3fs

    options, url = s3
    fs = s3fs.S3FileSystem(**options)
    bucket = url.removeprefix("s3://")
    fs.pipe(f"{bucket}/in/good.png", png())
    fs.pipe(f"{bucket}/in/p%2F..%2F..%2Fliteral.png", png())  # percent signs are part of the name
    for key in HOSTILE_KEYS:
        fs.pipe(f"{bucket}/in/{key}", png())
    before = set(fs.find(bucket))
    code = main(["run", f"{url}/in", f"{url}/out/dst", "--model", "bicubic", "--executor", "local", "--json",
                 f"--storage-option=endpoint_url={options['endpoint_url']}", f"--storage-option=key={options['key']}",
                 f"--storage-option=secret={options['secret']}"])
    summary = json.loads(capsys.readouterr().out)
    fs.invalidate_cache()
    written = set(fs.find(bucket)) - before
    assert summary["ok"] >= 1 and code == 3
    assert written and all(path.startswith(f"{bucket}/out/dst/") for path in written), written
    assert f"{bucket}/out/dst/good.png" in written
    assert f"{bucket}/out/dst/p%2F..%2F..%2Fliteral.png" in written  # verbatim, inside DST


def test_traversal_keys_in_a_list_file_are_refused_locally(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "good.png").write_bytes(png())
    (tmp_path / "escape.png").write_bytes(png())
    (tmp_path / "list.txt").write_text("good.png\n../escape.png\n" + str(tmp_path / "escape.png") + "\n")
    code = main(["run", str(tmp_path / "src"), str(tmp_path / "dst"), "--model", "bicubic", "--executor", "local",
                 "--from-list", str(tmp_path / "list.txt"), "--json"])
    capsys.readouterr()
    rows = pq.read_table(tmp_path / "dst" / "_manifest").to_pylist()
    refused = [r for r in rows if r["status"] == "failed"]
    assert code == 3 and len(refused) == 2 and {r["error_type"] for r in refused} == {"UnsafeKeyError"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "escape.png", "list.txt", "src"]
    assert [p.name for p in (tmp_path / "dst").iterdir() if p.suffix == ".png"] == ["good.png"]


def test_percent_signs_in_local_names_are_kept_verbatim(tmp_path, capsys):
    names = ["a%2Fb.png", "a/b.png", "x%20y.png", "x y.png"]
    for name in names:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(png())
    code = main(["run", str(tmp_path / "src"), str(tmp_path / "dst"), "--model", "bicubic", "--executor", "local",
                 "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ok"] == 4, summary
    written = sorted(str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*.png"))
    assert written == sorted(names)  # four distinct outputs, named as their sources
    rows = pq.read_table(tmp_path / "dst" / "_manifest").to_pylist()
    assert sorted(r["dst_uri"].rsplit("/dst/", 1)[1] for r in rows) == sorted(names)
