"""Large TIFFs streamed window by window: same output as in memory, windows read instead of
the whole image, memory set by the window, not the image. Small images and a low
threshold prove the path; the real sizes are in benchmarks/gigapixel.py."""

import io
import os
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile

rasterio = pytest.importorskip("rasterio")
from rio_cogeo.cogeo import cog_validate  # noqa: E402

from pipeline.formats import windows
from pipeline.stages import stream as streaming
from pipeline.inference.engine import Upscaler
from pipeline.models import load_model
from pipeline.job.local import run_local
from pipeline.spec import RunSpec

GEOKEYS = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32632, 3076, 0, 1, 9001)


def scene(height: int, width: int, bands: int = 4, seed: int = 0) -> np.ndarray:
    """uint16 reflectance-like bands with texture, and a nodata (0) corner."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    planes = [1500 + 900 * np.sin(xx / (9 + k)) * np.cos(yy / (13 - k)) + rng.normal(0, 40, (height, width))
              for k in range(bands)]
    pixels = np.clip(np.stack(planes, axis=2), 1, 60000).astype(np.uint16)
    pixels[(xx + yy) < min(height, width) * 0.3] = 0
    return pixels


def write_geotiff(path: Path, pixels: np.ndarray, **layout) -> None:
    tags = [(33550, 12, 3, (10.0, 10.0, 0.0), True), (33922, 12, 6, (0, 0, 0, 600000.0, 5000000.0, 0), True),
            (34735, 3, len(GEOKEYS), GEOKEYS, True), (42113, 2, 0, "0", True)]
    bands = pixels.shape[0] if layout.get("planarconfig") == "separate" else pixels.shape[2]
    extras = [0] * (bands - 1) if bands > 1 else None
    tifffile.imwrite(path, pixels, photometric="minisblack", extrasamples=extras, extratags=tags, metadata=None,
                     compression="zlib", **layout)


@pytest.fixture
def small_windows(monkeypatch):
    """Windows of 32 input pixels (x2: 64-pixel output tiles), so small images have many."""
    monkeypatch.setattr(streaming, "OUTPUT_TILE", 64)
    monkeypatch.setattr(streaming, "WINDOW_INPUT", 32)


def run(src, dst, **options) -> tuple[dict, dict]:
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=2.0, **options))
    rows = {r["image_id"]: r for r in pq.read_table(Path(dst) / "_manifest").to_pylist()}
    return summary, rows


LAYOUTS = {
    "tiled": {"tile": (32, 48)},
    "stripped": {"rowsperstrip": 7},
    "planar-separate": {"planarconfig": "separate", "rowsperstrip": 16},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_streamed_geotiff_equals_the_in_memory_output(tmp_path, small_windows, layout):
    pixels = scene(150, 130)
    src = tmp_path / "src"
    src.mkdir()
    if layout == "planar-separate":
        write_geotiff(src / "scene.tif", np.moveaxis(pixels, -1, 0), **LAYOUTS[layout])
    else:
        write_geotiff(src / "scene.tif", pixels, **LAYOUTS[layout])
    streamed, s_rows = run(src, tmp_path / "streamed", stream_threshold=100 * 100)
    in_memory, m_rows = run(src, tmp_path / "memory", stream_threshold=0)
    assert streamed["ok"] == in_memory["ok"] == 1
    s_row, m_row = s_rows["scene.tif"], m_rows["scene.tif"]
    assert s_row["stream_windows"] == 5 * 5  # ceil(150 / 32) rows of ceil(130 / 32) windows
    assert m_row["stream_windows"] is None
    a = tifffile.imread(tmp_path / "streamed" / "scene.tif")
    b = tifffile.imread(tmp_path / "memory" / "scene.tif")
    assert a.shape == (300, 260, 4) and a.dtype == np.uint16
    np.testing.assert_array_equal(a, b)
    nodata_in = (pixels == 0).all(axis=2)
    nodata_out = nodata_in[np.arange(300) // 2][:, np.arange(260) // 2]
    np.testing.assert_array_equal((a == 0).all(axis=2), nodata_out)  # nodata corner, nearest-neighbour
    assert s_row["lr_psnr"] == pytest.approx(m_row["lr_psnr"], abs=1e-9)
    for column in ("crs", "transform_out", "nodata", "bands", "radiometric", "width", "height", "src_mode"):
        assert s_row[column] == m_row[column], column
    with rasterio.open(tmp_path / "streamed" / "scene.tif") as ds:  # a COG by default, streamed or not
        assert ds.is_tiled and ds.block_shapes[0] == (512, 512) and ds.overviews(1) == []  # smaller than a block
        assert (ds.transform.a, ds.transform.e) == (5.0, -5.0) and ds.nodata == 0 and ds.crs.to_epsg() == 32632
    assert cog_validate(str(tmp_path / "streamed" / "scene.tif"))[0]


def test_streamed_plain_rgba_photo_equals_the_in_memory_output(tmp_path, small_windows):
    yy, xx = np.mgrid[0:90, 0:110]
    pixels = np.stack([(xx * 2) % 256, (yy * 3) % 256, (xx + yy) % 256, 255 - yy * 2], axis=2).astype(np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "photo.tif", pixels, photometric="rgb", extrasamples=["unassalpha"])
    run(src, tmp_path / "streamed", stream_threshold=1)
    run(src, tmp_path / "memory", stream_threshold=0)
    a = tifffile.imread(tmp_path / "streamed" / "photo.tif")
    b = tifffile.imread(tmp_path / "memory" / "photo.tif")
    assert a.shape == b.shape == (180, 220, 4)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # float rounding of the same arithmetic


def test_window_reader_reads_any_window_of_any_layout(tmp_path):
    pixels = scene(70, 90, bands=3, seed=3)
    rng = np.random.default_rng(0)
    for name, layout in LAYOUTS.items():
        data = np.moveaxis(pixels, -1, 0) if name == "planar-separate" else pixels
        write_geotiff(tmp_path / f"{name}.tif", data, **layout)
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tif:
            reader = windows.WindowReader(tif.pages[0], cache_bytes=4096)  # tiny cache: evictions too
            for _ in range(20):
                y0, x0 = rng.integers(0, 69), rng.integers(0, 89)
                y1, x1 = rng.integers(y0 + 1, 71), rng.integers(x0 + 1, 91)
                np.testing.assert_array_equal(reader.read(y0, y1, x0, x1), pixels[y0:y1, x0:x1], err_msg=name)
            assert reader.cached <= 4096 or len(reader.cache) == 1


def _stream_peak(path: Path, upscaler) -> tuple[int, streaming.StreamJob]:
    job = streaming.probe(str(path), {}, threshold=1)
    job.local_dir = str(path.parent)
    tracemalloc.start()
    try:
        streaming.run(job, upscaler, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        job.cleanup()
    return peak, job


def test_peak_memory_depends_on_the_window_not_on_the_image(tmp_path, small_windows, monkeypatch):
    from pipeline.formats import gdal

    monkeypatch.setattr(gdal.WindowReader, "STATS_BYTES", 64 << 10)  # the statistics pass, a band of rows at a time
    upscaler = Upscaler(load_model("bicubic", scale=2), device="cpu")
    peaks, jobs = [], []
    for side in (128, 512):  # 16 times the pixels
        write_geotiff(tmp_path / f"{side}.tif", scene(side, side), tile=(32, 32))
        peak, job = _stream_peak(tmp_path / f"{side}.tif", upscaler)
        peaks.append(peak)
        jobs.append(job)
    assert [j.windows for j in jobs] == [16, 256]
    whole_output = 1024 * 1024 * 4 * 2  # the large image's output, uint16: 8 MiB
    assert peaks[1] < 1.3 * peaks[0]
    assert peaks[1] < whole_output / 4
    tiles = (512 // 32) ** 2
    assert jobs[1].segments_decoded <= tiles + 4 * jobs[1].windows  # statistics pass + the tiles around each window


def test_streamed_output_to_object_storage_is_uploaded(tmp_path, small_windows):
    import fsspec

    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "scene.tif", scene(64, 80), tile=(32, 32))

    def temporary_files():
        return set(Path(streaming.tempfile.gettempdir()).glob(".upscaler-stream-*"))

    before = temporary_files()
    summary = run_local(RunSpec(src=str(src), dst="memory://streamed-out", model="bicubic", scale=2.0,
                                  stream_threshold=1))
    assert summary["ok"] == 1, summary["failures"]
    fs = fsspec.filesystem("memory")
    data = fs.cat_file("/streamed-out/scene.tif")
    assert tifffile.imread(io.BytesIO(data)).shape == (128, 160, 4)
    assert temporary_files() == before  # the local temporary file is gone


def test_a_streamed_local_output_has_a_plain_files_permissions(tmp_path, small_windows):
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "scene.tif", scene(40, 40), tile=(32, 32))
    old = os.umask(0o022)
    try:
        summary = run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2.0,
                                    stream_threshold=1))
    finally:
        os.umask(old)
    assert summary["ok"] == 1 and summary["failures"] == []
    assert (tmp_path / "dst" / "scene.tif").stat().st_mode & 0o777 == 0o644


def test_a_streamed_image_needs_an_integer_scale(tmp_path, small_windows):
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "scene.tif", scene(40, 40), tile=(32, 32))
    summary = run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=2.5,
                                  stream_threshold=1))
    assert summary["failed"] == 1
    assert "needs an integer scale, not 2.5" in summary["failures"][0]["error"]
    assert not list((tmp_path / "dst").glob("*.tmp"))  # the partial output is removed


def test_images_at_or_below_the_threshold_are_decoded_in_memory(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_geotiff(src / "scene.tif", scene(40, 50), tile=(32, 32))
    _summary, rows = run(src, tmp_path / "dst", stream_threshold=40 * 50)
    assert rows["scene.tif"]["stream_windows"] is None
    _summary, rows = run(src, tmp_path / "dst2", stream_threshold=40 * 50 - 1)
    assert rows["scene.tif"]["stream_windows"] == 1
    assert json.loads(rows["scene.tif"]["radiometric"])["mode"] == "minmax"
