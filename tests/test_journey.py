"""One image's journey through the stages, in this process (`--executor local`): no
failure of one image ends the run, no output replaces another, the resume key follows
the resolved settings, rows survive Ctrl-C and SIGTERM, and `plan` writes nothing."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from pipeline import formats, raster, store
from pipeline.cli import main
from pipeline.inference.engine import Upscaler
from pipeline.job.local import run_local
from pipeline.spec import RunSpec
from pipeline.stages import score as score_stage

from .conftest import save_edsr


def png(seed: int, h: int = 20, w: int = 16, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def gif(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png(seed))).convert("P").save(buffer, format="GIF")
    return buffer.getvalue()


def geotiff(path: Path, seed: int = 0) -> None:
    """A small georeferenced 3-band uint8 raster with nodata 0."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(1, 255, (24, 20, 3), dtype=np.uint8)
    pixels[:3, :3] = 0
    tifffile.imwrite(path, pixels, photometric="rgb", extratags=[
        (33550, 12, 3, (30.0, 30.0, 0.0), False), (33922, 12, 6, (0, 0, 0, 500000.0, 4000000.0, 0), False),
        (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32618), False),
        (42113, 2, 2, "0", False)])


def rows_of(dst: Path) -> list[dict]:
    files = sorted((dst / "_manifest").rglob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def records_of(dst: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((dst / "_manifest" / "_runs").glob("*.json"))]


def by_image(rows: list[dict]) -> dict[str, dict]:
    return {row["image_id"]: row for row in rows}


@pytest.fixture
def photos(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.png").write_bytes(png(ord(name)))
    return src


# ----------------------------------------------------------------- 1. no input ends a run


def _raise_for_b(real):
    def wrapper(*args, **kwargs):
        names = " ".join(str(a) for a in args) + " ".join(str(v) for v in kwargs.values())
        if "b.png" in names or "b.tif" in names:
            raise AttributeError("'NoneType' object has no attribute 'shape'\nsecond line of a traceback")
        return real(*args, **kwargs)
    return wrapper


STAGE_FAULTS = {
    "decode": (formats, "decode_image"),
    "write": (store, "write_atomic"),
}


@pytest.mark.parametrize("stage", sorted(STAGE_FAULTS))
def test_a_failure_injected_in_a_stage_fails_that_image_only_and_the_run_record_is_written(
        photos, tmp_path, monkeypatch, stage):
    module, name = STAGE_FAULTS[stage]
    if stage == "write":  # write_atomic(fs, path, data): the path names the image
        real = store.write_atomic
        monkeypatch.setattr(store, "write_atomic", lambda fs, path, data: (_ for _ in ()).throw(
            AttributeError("boom\nmore")) if path.endswith("b.png") else real(fs, path, data))
    else:
        monkeypatch.setattr(module, name, _raise_for_b(getattr(module, name)))
    dst = tmp_path / "dst"
    summary = run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2))
    assert (summary["ok"], summary["failed"]) == (2, 1)
    rows = by_image(rows_of(dst))
    assert rows["b.png"]["status"] == "failed" and rows["b.png"]["error"].startswith(f"{stage}: ")
    assert "\n" not in rows["b.png"]["error"] and rows["b.png"]["error_type"] == "AttributeError"
    assert rows["a.png"]["status"] == rows["c.png"]["status"] == "ok"
    assert len(records_of(dst)) == 1


def test_a_failure_in_encoding_fails_that_image_only(photos, tmp_path, monkeypatch):
    (photos / "b.png").write_bytes(png(1, h=21))  # its output alone is 42 rows high
    real = formats.encode_image
    monkeypatch.setattr(formats, "encode_image", lambda pixels, *a, **k: (_ for _ in ()).throw(
        IndexError("injected in encoding")) if pixels.shape[0] == 42 else real(pixels, *a, **k))
    dst = tmp_path / "dst"
    summary = run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2))
    rows = by_image(rows_of(dst))
    assert (summary["ok"], summary["failed"]) == (2, 1)
    assert rows["b.png"]["error"] == "encode: injected in encoding" and not (dst / "b.png").exists()


def test_an_error_that_escapes_the_loop_still_leaves_the_rows_and_the_run_record(photos, tmp_path, monkeypatch):
    from pipeline.job import local

    real_infer, calls = local.Worker.infer, {"n": 0}

    def infer(self, group):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug outside any stage")
        return real_infer(self, group)

    monkeypatch.setattr(local.Worker, "infer", infer)
    dst = tmp_path / "dst"
    with pytest.raises(RuntimeError, match="a bug outside any stage"):
        run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2, batch_images=1))
    assert sorted(r["image_id"] for r in rows_of(dst)) == ["a.png", "b.png"]
    record = records_of(dst)[0]
    assert record["ok"] == 2 and record["interrupted"] == "error: RuntimeError: a bug outside any stage"


def test_a_failure_in_inference_or_scoring_fails_that_image_only(photos, tmp_path, monkeypatch):
    real_upscale = Upscaler.upscale

    def upscale(self, images, scale=None, **kwargs):  # the 20 x 16 image "b" is made 21 rows high below
        if any(img.shape[0] == 21 for img in images):
            raise TypeError("injected in inference")
        return real_upscale(self, images, scale, **kwargs)

    (photos / "b.png").write_bytes(png(1, h=21))
    (photos / "d.png").write_bytes(png(4))
    monkeypatch.setattr(Upscaler, "upscale", upscale)
    real_score = score_stage.metrics_for
    monkeypatch.setattr(score_stage, "metrics_for", lambda lr, sr, key, *a, **k: (_ for _ in ()).throw(
        KeyError("injected in scoring")) if key == "d.png" else real_score(lr, sr, key, *a, **k))
    dst = tmp_path / "dst"
    summary = run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2, batch_images=4))
    rows = by_image(rows_of(dst))
    assert (summary["ok"], summary["failed"]) == (2, 2)
    assert rows["b.png"]["error"] == "infer: injected in inference"
    assert rows["d.png"]["error"].startswith("score: ") and rows["d.png"]["error_type"] == "KeyError"
    assert rows["a.png"]["status"] == rows["c.png"]["status"] == "ok"


@pytest.mark.parametrize("step", ["band plan", "nodata fill", "nodata restore"])
def test_a_failure_in_a_rasters_band_plan_or_nodata_steps_fails_that_raster_only(tmp_path, monkeypatch, step):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a", "b"):
        geotiff(src / f"{name}.tif", seed=ord(name))
    calls = {"n": 0}
    owner, method = {"band plan": (raster, "plan_for"), "nodata fill": (raster.BandPlan, "inputs"),
                     "nodata restore": (raster.BandPlan, "restore")}[step]
    real = getattr(owner, method)

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second raster's
            raise OverflowError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, method, failing if owner is raster else lambda self, *a, **k: failing(self, *a, **k))
    dst = tmp_path / "dst"
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2, batch_images=1))
    assert (summary["ok"], summary["failed"]) == (1, 1)
    failed = [r for r in rows_of(dst) if r["status"] == "failed"]
    assert failed[0]["error"] == f"{step}: injected" and failed[0]["error_type"] == "OverflowError"
    assert len(records_of(dst)) == 1


def test_an_image_that_runs_out_of_memory_says_how_big_it_was(photos, tmp_path, monkeypatch):
    real = Upscaler.upscale

    def upscale(self, images, scale=None, **kwargs):
        if len(images) == 1 and images[0].shape[0] == 20:
            raise MemoryError()
        return real(self, images, scale, **kwargs)

    monkeypatch.setattr(Upscaler, "upscale", upscale)
    dst = tmp_path / "dst"
    run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2, batch_images=1))
    row = by_image(rows_of(dst))["a.png"]
    assert row["error_type"] == "MemoryError"
    assert row["error"] == "infer: out of memory (a 16 x 20 x 3 uint8 image)"


# ---------------------------------------------------------------- 2. no silent overwrite


def test_sources_with_one_output_key_are_refused_each_naming_the_other(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "photo.png").write_bytes(png(1))
    (src / "photo.gif").write_bytes(gif(2))
    (src / "other.png").write_bytes(png(3))
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2))
    rows = by_image(rows_of(dst))
    assert (summary["ok"], summary["failed"]) == (1, 2)
    assert rows["photo.png"]["error_type"] == rows["photo.gif"]["error_type"] == "OutputCollisionError"
    assert "photo.gif" in rows["photo.png"]["error"] and "photo.png" in rows["photo.gif"]["error"]
    assert not (dst / "photo.png").exists()


def test_keep_extension_gives_sources_of_one_stem_their_own_outputs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "photo.png").write_bytes(png(1))
    (src / "photo.gif").write_bytes(gif(2))
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2, keep_extension=True))
    assert summary["ok"] == 2
    assert formats.decode_image((dst / "photo.gif.png").read_bytes()).pixels.shape == (40, 32, 3)
    assert formats.decode_image((dst / "photo.png.png").read_bytes()).pixels.shape == (40, 32, 3)


def test_format_merging_extensions_and_case_only_differences_on_a_case_insensitive_store_collide(
        tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg())
    (src / "a.png").write_bytes(png(1))
    (src / "B.png").write_bytes(png(2))
    (src / "b.png").write_bytes(png(3))
    monkeypatch.setattr(store, "is_case_insensitive", lambda fs, root: True)
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2, format="png"))
    assert (summary["ok"], summary["failed"]) == (0, 4)
    assert {r["error_type"] for r in rows_of(dst)} == {"OutputCollisionError"}
    assert not list(dst.glob("*.png"))


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png(9))).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_new_source_is_refused_where_an_earlier_run_wrote_another_images_output(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "photo.png").write_bytes(png(1))
    run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2))
    before = (dst / "photo.png").read_bytes()
    (src / "photo.gif").write_bytes(gif(2))
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2))
    assert (summary["skipped"], summary["failed"]) == (1, 1)
    assert "written by an earlier run for photo.png" in summary["failures"][0]["error"]
    assert (dst / "photo.png").read_bytes() == before


def test_keys_are_never_percent_decoded(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a").mkdir(parents=True)
    (src / "a%2Fb.png").write_bytes(png(1))
    (src / "a" / "b.png").write_bytes(png(2))
    (src / "x%20y.png").write_bytes(png(3))
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2))
    assert summary["ok"] == 3
    assert (dst / "a%2Fb.png").exists() and (dst / "a" / "b.png").exists() and (dst / "x%20y.png").exists()
    assert not (dst / "x y.png").exists()


# ------------------------------------------------ 3. source and destination, and independence


def test_source_and_destination_at_the_same_place_is_a_usage_error(photos):
    assert main(["run", str(photos), str(photos) + "/", "--model", "bicubic", "--executor", "local"]) == 2
    assert sorted(p.name for p in photos.iterdir()) == ["a.png", "b.png", "c.png"]


def test_a_destination_inside_the_source_is_never_an_input(photos):
    dst = photos / "up"
    for _ in range(2):
        run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2, force=True))
    assert sorted(r["image_id"] for r in rows_of(dst)) == ["a.png", "a.png", "b.png", "b.png", "c.png", "c.png"]
    assert not (dst / "up").exists()


def _cnn_weights(tmp_path) -> str:
    return save_edsr(tmp_path / "edsr.safetensors")


def test_a_real_cnns_output_is_the_same_alone_and_batched_and_the_row_records_its_tile(tmp_path):
    weights = _cnn_weights(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.png").write_bytes(png(1, 150, 130))
    (src / "small.png").write_bytes(png(2, 20, 16))
    (src / "mid.png").write_bytes(png(3, 60, 50))
    alone = tmp_path / "alone"
    for name in ("big", "small", "mid"):
        run_local(RunSpec(src=str(src / f"{name}.png"), dst=str(alone), model=weights, tile=64, batch_images=1))
    together = tmp_path / "together"
    run_local(RunSpec(src=str(src), dst=str(together), model=weights, tile=64, batch_images=3))
    for name in ("big", "small", "mid"):
        assert (alone / f"{name}.png").read_bytes() == (together / f"{name}.png").read_bytes(), name
    rows = by_image(rows_of(together))
    assert (rows["big.png"]["tile"], rows["big.png"]["overlap"]) == ("64", 32)  # EDSR's own overlap, kept
    assert (rows["mid.png"]["tile"], rows["mid.png"]["overlap"]) == ("0", 0)  # fits one tile: whole


# ---------------------------------------------------------- 4. resume from resolved settings


def _redone(src, dst, **options) -> int:
    summary = run_local(RunSpec(src=str(src), dst=str(dst), **options))
    return summary["ok"] + summary["failed"]


@pytest.mark.parametrize("change", [
    {"quality": 80}, {"compress_level": 6}, {"format": "tiff"}, {"tile": 64}, {"overlap": 4},
    {"stream_threshold": 100}, {"band_mode": "each"}, {"radiometric": "minmax"}, {"precision": "bf16"},
])
def test_changing_an_output_setting_redoes_the_image(tmp_path, change):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(1))
    base = {"model": "bicubic", "scale": 2}
    assert _redone(src, tmp_path / "dst", **base) == 1
    assert _redone(src, tmp_path / "dst", **base) == 0
    assert _redone(src, tmp_path / "dst", **base, **change) == 1


def test_writing_a_default_explicitly_redoes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(1))
    weights = _cnn_weights(tmp_path)
    assert _redone(src, tmp_path / "dst", model=weights) == 1
    model_overlap = Upscaler(formats_free_model(weights)).overlap
    assert _redone(src, tmp_path / "dst", model=weights, scale=2, precision="auto", overlap=model_overlap,
                   band_mode="rgb+gray", radiometric="auto", quality=95) == 0


def formats_free_model(weights: str):
    from pipeline.models import load_model

    return load_model(weights)


# ------------------------------------------------------------------ 12. rows are never lost


def _slow_source(tmp_path, count: int = 16) -> tuple[Path, str]:
    weights = save_edsr(tmp_path / "slow.safetensors", feat=32, blocks=4)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        (src / f"img{i:02d}.png").write_bytes(png(i, 64, 64))
    return src, weights


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_keeps_its_rows_and_the_same_command_finishes_it(tmp_path, signum, status):
    src, weights = _slow_source(tmp_path)
    dst = tmp_path / "dst"
    command = [sys.executable, "-m", "pipeline.cli", "run", str(src), str(dst), "--model", weights,
               "--executor", "local", "--batch-size", "1", "--precision", "fp32", "--no-progress"]  # fp32: slow enough
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(dst.glob("*.png"))) < 2:
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    assert "Traceback" not in err and "the same command" in err and str(dst / "_manifest") in err
    rows = rows_of(dst)
    outputs = sorted(p.name for p in dst.glob("*.png"))
    assert 2 <= len(rows) < 16 and sorted(r["image_id"] for r in rows) == outputs  # every output has its row
    assert records_of(dst)[0]["interrupted"] == ("SIGINT" if signum == signal.SIGINT else "SIGTERM")
    done = subprocess.run(command[:-1] + ["--json", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["skipped"] == len(rows)
    ok = [r["image_id"] for r in rows_of(dst) if r["status"] == "ok"]
    assert sorted(ok) == sorted(f"img{i:02d}.png" for i in range(16))  # each exactly once


def test_rerun_finishes_an_interrupted_run(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"i{i}.png").write_bytes(png(i))
    dst = tmp_path / "dst"
    from pipeline.job import local

    real_infer, calls = local.Worker.infer, {"n": 0}

    def infer(self, group):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_infer(self, group)

    monkeypatch.setattr(local.Worker, "infer", infer)
    with pytest.raises(local.RunInterrupted) as stopped:
        run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2, batch_images=1))
    assert stopped.value.summary["ok"] == 2 and stopped.value.exit_status == 130
    monkeypatch.setattr(local.Worker, "infer", real_infer)
    assert main(["rerun", str(dst), "--executor", "local", "--no-progress"]) == 0
    ok = [r["image_id"] for r in rows_of(dst) if r["status"] == "ok"]
    assert sorted(ok) == [f"i{i}.png" for i in range(6)]


def test_rows_are_flushed_by_time_while_the_run_goes_on(photos, tmp_path, monkeypatch):
    from pipeline.job import sink

    monkeypatch.setattr(sink, "FLUSH_SECONDS", 0.0)
    dst = tmp_path / "dst"
    run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2, batch_images=1))
    assert len(list((dst / "_manifest").rglob("*.parquet"))) == 3  # one part per row: each flushed at once


# ------------------------------------------------------------- 13. plan runs and writes nothing


def test_plan_writes_nothing_not_even_recovery(photos, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "dst"
    run_local(RunSpec(src=str(photos), dst=str(dst), model="bicubic", scale=2))
    (dst / "_plans" / "stale-run").mkdir(parents=True)
    (dst / "_plans" / "stale-run" / "chunk-000000.parquet").write_bytes(b"x")
    run_id = records_of(dst)[0]["run_id"]
    os.rename(dst / "_plans" / "stale-run", dst / "_plans" / run_id)  # a finished run's leftover plan
    spool_dir = tmp_path / "spool"
    monkeypatch.setenv("UPSCALER_SPOOL", str(spool_dir))
    from pipeline.store import spool

    spool.keep(spool.dst_url(*store.open_location(str(dst))), "run_id=x/part-y.parquet", b"rows")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main(["plan", str(photos), str(dst), "--model", "bicubic", "--scale", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 3
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


# --------------------------------------------------------------- 6. errors classified


def test_a_key_the_destination_rejects_fails_at_once_never_opens_the_circuit_and_is_quarantined(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    names = [letter * 250 + ".png" for letter in "abcd"]  # 254 bytes: fits; the output name (258) does not
    for i, name in enumerate(names):
        (src / name).write_bytes(png(i))
    spec = dict(src=str(src), dst=str(dst), model="bicubic", scale=2, keep_extension=True, storage_failures=2)
    started = time.perf_counter()
    summary = run_local(RunSpec(**spec))
    assert time.perf_counter() - started < 20  # not retried for a minute each
    rows = rows_of(dst)
    assert summary["failed"] == 4 and {r["error_type"] for r in rows} == {"KeyRejectedError"}
    assert all("ENAMETOOLONG" in r["error"] and "not attempted" not in r["error"] for r in rows)
    run_local(RunSpec(**spec))
    assert run_local(RunSpec(**spec))["quarantined"] == 4


# ------------------------------------------------------------ 9. the time limit holds everywhere


def test_the_time_limit_holds_for_a_streamed_image_and_an_interpolation_model(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(src / "big.tif", rng.integers(0, 255, (300, 280, 3), dtype=np.uint8), photometric="rgb")
    (src / "small.png").write_bytes(png(1))
    dst = tmp_path / "dst"
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2, stream_threshold=10_000,
                                time_limit=1e-6, batch_images=1))
    rows = by_image(rows_of(dst))
    assert summary["failed"] == 2
    assert rows["big.tif"]["error_type"] == rows["small.png"]["error_type"] == "ImageTimeLimitError"
    assert rows["big.tif"]["error"].startswith("infer: ") and not (dst / "big.tif").exists()
    assert not list(dst.glob(".upscaler-stream-*"))  # the streamed temporary file is gone too


# ------------------------------------------------- an output format that cannot hold the image


def test_a_format_that_cannot_hold_the_image_is_refused_before_inference_and_never_quarantined(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    geotiff(src / "scene.tif")
    rng = np.random.default_rng(0)
    tifffile.imwrite(src / "big.tif", rng.integers(0, 255, (120, 100, 3), dtype=np.uint8), photometric="rgb")
    (src / "photo.png").write_bytes(png(1))
    spec = dict(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2, format="jpeg",
                stream_threshold=10_000)
    for _ in range(3):  # a deterministic failure twice would quarantine a bad file; a setting is not one
        summary = run_local(RunSpec(**spec))
        assert (summary["ok"] + summary["skipped"], summary["failed"], summary["quarantined"]) == (1, 2, 0)
    rows = [r for r in rows_of(tmp_path / "dst") if r["status"] == "failed"]
    assert {r["error_type"] for r in rows} == {"OutputFormatError"}
    assert all(r["error"].startswith("read: ") and r["seconds_infer"] is None for r in rows)
    assert run_local(RunSpec(**{**spec, "format": "tiff"}))["ok"] == 3


@pytest.mark.parametrize("cores, helpers", [(1, 1), (2, 1), (3, 2), (16, 4)])
def test_reads_and_writes_get_the_cores_the_model_thread_leaves_at_most_four(monkeypatch, cores, helpers):
    from pipeline.job import local

    monkeypatch.setattr(local.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert local.helper_threads() == helpers


@pytest.mark.parametrize("dst_on_s3, threads", [(False, 0), (True, 1)])
def test_with_the_model_on_this_cpu_and_local_files_the_stages_run_in_order_without_helpers(
        tmp_path, monkeypatch, request, dst_on_s3, threads):
    """Helpers overlap waiting: with nothing to wait for (CPU model, local files) they only contend."""
    import threading

    from pipeline.job import local
    from pipeline.job.worker import Worker

    monkeypatch.setattr(local, "helper_threads", lambda: 1)
    seen, real = [], Worker.finish
    monkeypatch.setattr(Worker, "finish", lambda self, work: seen.append(threading.current_thread().name)
                        or real(self, work))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(png(i))
    options, dst = ({}, str(tmp_path / "dst"))
    if dst_on_s3:
        options, bucket = request.getfixturevalue("s3")
        dst = f"{bucket}/dst"
    summary = run_local(RunSpec(src=str(src), dst=dst, model="bicubic", scale=2, storage_options=options))
    assert summary["ok"] == 3
    assert {name.startswith("io") for name in seen} == {bool(threads)}


def test_the_model_thread_reads_a_group_itself_when_no_helper_has_begun_it():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.job import local

    class Reader:  # records which thread read each image
        def read(self, planned, circuit):
            return planned, threading.current_thread().name

    busy = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="io") as helpers:
        helpers.submit(busy.wait, 10)  # the only helper is writing
        queued = helpers.submit(local._read, Reader(), ["a", "b"], None)
        assert local._take((queued, ["a", "b"]), Reader(), None) == [("a", "MainThread"), ("b", "MainThread")]
        assert queued.cancelled()
        busy.set()
        started = helpers.submit(local._read, Reader(), ["c"], None)
        started.result()
        assert local._take((started, ["c"]), Reader(), None)[0][1].startswith("io")  # begun: its result
