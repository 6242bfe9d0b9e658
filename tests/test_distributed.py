"""The Ray executor on a real local Ray (2 CPUs, one instance for this module)
against a real S3 server: outputs, manifest, resume, rerun, a killed worker."""

import io
import json
import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import formats
from pipeline.job import units
from pipeline.inference.engine import cpu_has_native_bf16
from pipeline.cli import EXIT_OK, EXIT_SOME_FAILED, main

from .conftest import S3_KEY, S3_SECRET, save_edsr

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # The dashboard serves Ray's state API, which the killed-worker test asks for its own actor's pid;
    # port 0: a free port, so the state API can only reach this module's cluster, never another one here.
    ray.init(num_cpus=2, include_dashboard=True, dashboard_port=0, log_to_driver=False)
    yield
    ray.shutdown()


def png(seed: int, h: int = 24, w: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([(xx * (3 + seed) + yy * 5 + k * 40) % 256 for k in range(3)], axis=2).astype(np.uint8)
    pixels = np.clip(pixels.astype(int) + rng.integers(-8, 8, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def summary_json(out: str) -> dict:
    """The summary object: the last top-level JSON in stdout (Ray's raylet may print above it)."""
    start = out.rfind("\n{\n") + 1 if not out.startswith("{\n") or out.rfind("\n{\n") > 0 else 0
    return json.loads(out[start:])


def cli(*args) -> int:
    return main([str(a) for a in args])


def storage_args(options) -> list[str]:
    return [f"--storage-option=endpoint_url={options['endpoint_url']}", f"--storage-option=key={options['key']}",
            f"--storage-option=secret={options['secret']}"]


def manifest_rows(fs, dst: str) -> list[dict]:
    rows = []
    for path in fs.glob(dst.removeprefix("s3://") + "/_manifest/run_id=*/*.parquet"):
        run_id = path.split("run_id=")[1].split("/")[0]
        with fs.open(path, "rb") as f:
            rows += [dict(r, run_id=run_id) for r in pq.read_table(f).to_pylist()]
    return rows


@pytest.fixture
def bucket(s3):
    import s3fs

    options, url = s3
    fs = s3fs.S3FileSystem(**options)
    for i in range(6):
        fs.pipe(f"{url.removeprefix('s3://')}/in/dir{i % 2}/img{i}.png", png(i))
    return fs, options, url


def tiny_cnn(tmp_path) -> str:
    return save_edsr(tmp_path / "tiny.safetensors")


def test_ray_run_reads_and_writes_s3_and_matches_the_local_executor_byte_for_byte(bucket, tmp_path, capsys):
    fs, options, url = bucket
    fs.pipe(f"{url.removeprefix('s3://')}/in/big.png", png(9, 40, 36))  # tiled at --tile 16; the others too
    model = ["--model", tiny_cnn(tmp_path), "--tile", "16", "--overlap", "4"]
    assert cli("run", f"{url}/in", f"{url}/out-ray", *model, "--workers", "1", "--json",
               *storage_args(options)) == EXIT_OK
    summary = summary_json(capsys.readouterr().out)
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (7, 0, 0)
    assert cli("run", f"{url}/in", f"{url}/out-local", *model, "--executor", "local", "--batch-size", "3",
               *storage_args(options)) == EXIT_OK
    fs.invalidate_cache()
    root = url.removeprefix("s3://")
    for i in range(6):
        key = f"dir{i % 2}/img{i}.png"
        ray_bytes, local_bytes = fs.cat(f"{root}/out-ray/{key}"), fs.cat(f"{root}/out-local/{key}")
        assert ray_bytes == local_bytes
        assert formats.decode_image(ray_bytes).pixels.shape == (48, 40, 3)
    ray_rows = sorted(manifest_rows(fs, f"{url}/out-ray"), key=lambda r: r["image_id"])
    local_rows = sorted(manifest_rows(fs, f"{url}/out-local"), key=lambda r: r["image_id"])
    assert fs.cat(f"{root}/out-ray/big.png") == fs.cat(f"{root}/out-local/big.png")
    assert [r["image_id"] for r in ray_rows] == ["big.png"] + [
        f"dir{i % 2}/img{i}.png" for i in sorted(range(6), key=lambda i: f"dir{i % 2}/img{i}")]
    auto = "bf16" if cpu_has_native_bf16() else "fp32"  # --precision auto on this CPU
    assert {(r["tile"], r["overlap"], r["precision"]) for r in ray_rows} == {("16", 4, auto)}
    same = ["image_id", "status", "width", "height", "out_width", "out_height", "model", "scale", "lr_psnr",
            "source_version", "config_key", "tile", "overlap", "precision"]
    assert [{k: r[k] for k in same} for r in ray_rows] == [{k: r[k] for k in same} for r in local_rows]
    assert not fs.glob(f"{root}/out-ray/_plans/*")  # the plan is cleaned up
    # credentials appear in neither the manifest nor the run record
    for path in fs.find(f"{root}/out-ray/_manifest"):
        data = fs.cat(path)
        assert S3_SECRET.encode() not in data and S3_KEY.encode() not in data


def test_resume_skips_done_images_redoes_deleted_outputs_and_rerun_fixes_only_the_failed(bucket, capsys):
    fs, options, url = bucket
    root = url.removeprefix("s3://")
    fs.pipe(f"{root}/in/broken.png", b"\x89PNG\r\n\x1a\n not really")
    run = ["run", f"{url}/in", f"{url}/out", "--model", "bicubic", "--workers", "1", "--json", *storage_args(options)]
    assert cli(*run) == EXIT_SOME_FAILED
    first = summary_json(capsys.readouterr().out)
    assert (first["ok"], first["failed"], first["skipped"]) == (6, 1, 0)

    assert cli(*run) == EXIT_SOME_FAILED  # the broken one is tried again, nothing else
    second = summary_json(capsys.readouterr().out)
    assert (second["ok"], second["failed"], second["skipped"]) == (0, 1, 6)

    fs.rm(f"{root}/out/dir1/img3.png")
    fs.pipe(f"{root}/in/broken.png", png(99))  # the source is repaired
    assert cli("rerun", f"{url}/out", "--dry-run", "--json", *storage_args(options)) == EXIT_OK
    planned = summary_json(capsys.readouterr().out)
    assert (planned["failed"], planned["missing"]) == (1, 1)
    assert cli("rerun", f"{url}/out", "--workers", "1", "--json", *storage_args(options)) == EXIT_OK
    rerun = summary_json(capsys.readouterr().out)
    assert (rerun["ok"], rerun["failed"]) == (2, 0)

    fs.invalidate_cache()
    assert fs.exists(f"{root}/out/dir1/img3.png") and fs.exists(f"{root}/out/broken.png")
    rows = manifest_rows(fs, f"{url}/out")
    assert len(rows) == 7 + 1 + 2  # first run, second run, rerun: one row per image per run
    assert cli(*run) == EXIT_OK
    final = summary_json(capsys.readouterr().out)
    assert (final["ok"], final["failed"], final["skipped"]) == (0, 0, 7)


def upscale_worker_pids() -> list[int]:
    """Pids of the live UpscaleWorker actors of the cluster this process is connected to. Ray Data runs
    the class inside its own _MapWorker actor; Ray 2.60 lists that actor's class_name (and repr_name, a
    detail field) as "MapWorker(MapBatches(UpscaleWorker))", so the match is on a substring of either."""
    from ray.util.state import list_actors

    # The address is this cluster's own: left out, the state API looks for "the" cluster on the machine
    # and gives up (or picks another) when other Ray instances run there.
    actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True,
                         filters=[("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid and "UpscaleWorker" in f"{a.class_name} {a.repr_name or ''}"]


def test_killing_a_worker_mid_run_loses_no_image_and_duplicates_none(tmp_path, capsys):
    weights = save_edsr(tmp_path / "edsr.safetensors", feat=32, blocks=8)  # slow enough to be caught mid-run
    src = tmp_path / "src"
    src.mkdir()
    count = 32
    for i in range(count):
        (src / f"img{i:02d}.png").write_bytes(png(i, 128, 128))
    killed, errors = [], []

    def kill_one_worker():
        """SIGKILL this run's actor once a unit's receipt is written. Its pid comes from the state API of
        this module's own cluster: matching command lines would also kill other runs' workers on the machine."""
        deadline = time.time() + 60
        try:
            while time.time() < deadline and not killed:
                if list((tmp_path / "dst").glob("_plans/*/receipts/*.parquet")):
                    for pid in upscale_worker_pids()[:1]:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                time.sleep(0.05)
        except Exception as error:  # re-raised by the test: a failing state API must not pass as "too fast"
            errors.append(error)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    code = cli("run", src, tmp_path / "dst", "--model", weights, "--workers", "1", "--batch-size", "2", "--json")
    killer.join()
    if errors:
        raise errors[0]
    summary = summary_json(capsys.readouterr().out)
    assert killed, "the worker was never killed: the run finished too fast to test anything"
    assert code == EXIT_OK and (summary["ok"], summary["failed"]) == (count, 0)
    rows = pq.read_table(str(tmp_path / "dst" / "_manifest")).to_pylist()  # the folder reads as one table
    assert sorted(r["image_id"] for r in rows) == sorted(f"img{i:02d}.png" for i in range(count))
    for i in range(count):
        assert formats.decode_image((tmp_path / "dst" / f"img{i:02d}.png").read_bytes()).pixels.shape == (256, 256, 3)
    assert not [p for p in (tmp_path / "dst").rglob("*") if p.name.endswith(".tmp")]
    # The units the killed actor finished (of 8 images: blocks of 32 / 4) come back from their receipts,
    # not done again.
    assert sum(r["worker"].endswith(f"-{killed[0]}") for r in rows) >= 8


def test_two_hundred_images_spread_over_both_workers(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(200):
        (src / f"img{i:03d}.png").write_bytes(png(i, 8, 8))
    code = cli("run", src, tmp_path / "dst", "--model", "bicubic", "--scale", "2", "--workers", "2",
               "--cpus-per-worker", "0.5", "--json")
    assert code == EXIT_OK and summary_json(capsys.readouterr().out)["ok"] == 200
    rows = pq.read_table(str(tmp_path / "dst" / "_manifest")).to_pylist()
    per_worker = {}
    for row in rows:
        per_worker[row["worker"]] = per_worker.get(row["worker"], 0) + 1
    # Both got blocks (how many each does depends on which actor was up first: tiny images go fast).
    assert len(per_worker) == 2 and sum(per_worker.values()) == 200, per_worker


def test_a_unit_fed_again_after_a_restart_is_answered_from_its_receipt(tmp_path):
    from pipeline.job.ray import UpscaleWorker
    from pipeline.spec import RunSpec

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(1, 8, 8))
    spec = RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2)
    image = {"uri": str(src / "a.png"), "key": "a.png", "size": 1, "version": "v1", "output_key": "a.png",
             "refused": ""}
    batch = pa.Table.from_pylist([{"unit": "u1", "images": [image]}], schema=units.PLAN_SCHEMA)
    plan_dir = tmp_path / "dst" / "_plans" / "run"
    plan_dir.mkdir(parents=True)  # as write_plan leaves it; a removed plan (the run ended) gets no receipts
    plan_dir = str(plan_dir)
    first = UpscaleWorker(spec, "run", "key", 1, plan_dir)(batch).to_pylist()
    (tmp_path / "dst" / "a.png").unlink()
    again = UpscaleWorker(spec, "run", "key", 1, plan_dir)(batch).to_pylist()  # a restarted actor
    assert again == first and first[0]["status"] == "ok"
    assert not (tmp_path / "dst" / "a.png").exists()  # not done again


def test_blocks_spread_over_the_workers_in_whole_groups():
    assert [units.block_images(n, w, 4) for n, w in ((200, 2), (9_999, 8), (1_000_000, 8), (3, 2), (0, 2))] == \
        [28, 316, 10_000, 4, 4]


def _planned(sizes):
    from pipeline import store
    from pipeline.stages.list import PlannedImage

    return [PlannedImage(store.Source(f"file:///s/{i}.png", f"{i}.png", size, "v"), f"{i}.png", "")
            for i, size in enumerate(sizes)]


def test_units_close_at_their_image_count_or_their_bytes_never_below_a_group():
    tiny = _planned([3_000] * 150)
    assert [len(u) for u in units.units(tiny, 4)] == [64, 64, 22]
    thumbnails = _planned([100_000] * 30)  # 100 kB each: 1 MiB on CPU workers at the 11th, 8 MiB on GPUs
    assert [len(u) for u in units.units(thumbnails, 4)] == [11, 11, 8]
    assert [len(u) for u in units.units(thumbnails, 4, max_bytes=units.UNIT_BYTES["gpu"])] == [30]
    photos = _planned([3 << 20] * 10)  # 3 MiB each: over the budget at once, but a group is four
    assert [len(u) for u in units.units(photos, 4, max_bytes=units.UNIT_BYTES["gpu"])] == [4, 4, 2]
    mixed = _planned([100, 100, 9 << 20, 100, 100, 100, 100])
    assert [len(u) for u in units.units(mixed, 2)] == [3, 4]
    assert [p.source.key for u in units.units(mixed, 2) for p in u] == [f"{i}.png" for i in range(7)]


def test_the_plan_holds_every_image_once_in_units_a_restart_finds_again(tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    todo = _planned([3_000] * 300)
    paths = units.write_plan(todo, fs, str(tmp_path / "plan"), block=128, batch=4)
    tables = [units.read_chunk(pa.table({"path": [p]}), str(tmp_path), None) for p in paths]
    rows = [row for t in tables for row in t.to_pylist()]
    assert [len(t) for t in tables] == [2, 2, 1]  # blocks of 128 images: units of 64, 64 | 64, 64 | 44
    assert [i["key"] for r in rows for i in r["images"]] == [p.source.key for p in todo]
    assert rows[0]["unit"] == units.unit_id(f"{i}.png" for i in range(64))
    assert units.planned_images(rows[-1]["images"])[-1] == todo[-1]


def test_ctrl_c_on_a_ray_run_keeps_the_rows_of_every_written_output(tmp_path):
    """The driver, interrupted, writes the rows that reached it and a run record marked interrupted;
    the same command then finishes the job with each image recorded ok exactly once."""
    import subprocess
    import sys

    weights = save_edsr(tmp_path / "edsr.safetensors", feat=32, blocks=4)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(24):
        (src / f"img{i:02d}.png").write_bytes(png(i, 64, 64))
    command = [sys.executable, "-m", "pipeline.cli", "run", str(src), str(dst), "--model", str(weights),
               "--workers", "1", "--batch-size", "1", "--precision", "fp32", "--no-progress"]  # fp32: slow enough
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(dst.glob("*.png"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 130, err
    assert "the same command" in err and "Traceback" not in err
    rows = pq.read_table(dst / "_manifest").to_pylist()
    records = [json.loads(p.read_text()) for p in (dst / "_manifest" / "_runs").glob("*.json")]
    assert records[0]["interrupted"] == "SIGINT" and len(rows) == records[0]["ok"] + records[0]["failed"]
    assert not (dst / "_plans").exists()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    ok = [r["image_id"] for r in pq.read_table(dst / "_manifest").to_pylist() if r["status"] == "ok"]
    assert sorted(ok) == [f"img{i:02d}.png" for i in range(24)]
