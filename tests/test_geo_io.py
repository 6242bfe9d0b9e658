"""Rasters through rasterio (GDAL): inputs written by rasterio itself (GeoTIFF, COG, JPEG 2000,
GCPs, RPCs, band metadata), read from a path, memory:// or S3, in memory or streamed; outputs
checked as GDAL and rio-cogeo's validator see them (COG layout, overviews, georeference)."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.control import GroundControlPoint  # noqa: E402
from rasterio.rpc import RPC  # noqa: E402
from rasterio.transform import RPCTransformer, from_origin  # noqa: E402
from rio_cogeo.cogeo import cog_validate  # noqa: E402

from pipeline.cli import build_parser, config_from_args  # noqa: E402
from pipeline.job.local import run_local  # noqa: E402
from pipeline.spec import RunSpec  # noqa: E402
from pipeline.stages import stream as streaming  # noqa: E402

UTM33 = "EPSG:32633"
ORIGIN = from_origin(399960.0, 5000040.0, 10.0, 10.0)  # a Sentinel-2 tile's corner, 10 m pixels


def bands(height: int, width: int, count: int, dtype="uint16", seed: int = 0) -> np.ndarray:
    """count x H x W reflectance-like bands (smooth, with noise), as rasterio writes them."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    planes = [1200 + 700 * np.sin(xx / (7 + k)) * np.cos(yy / (11 - k)) + rng.normal(0, 30, (height, width))
              for k in range(count)]
    data = np.stack(planes)
    if np.dtype(dtype).kind == "f":
        return (data / 10000).astype(dtype)
    return np.clip(data, 1, np.iinfo(dtype).max).astype(dtype)


def write(path: Path, data: np.ndarray, *, driver="GTiff", crs=UTM33, transform=ORIGIN, **extra) -> Path:
    """A raster written by rasterio: `extra` are creation options, or metadata set after writing
    (descriptions, scales, offsets, units, tags, band_tags, gcps, rpcs, colorinterp)."""
    after = {k: extra.pop(k) for k in ("descriptions", "scales", "offsets", "units", "tags", "band_tags", "gcps",
                                       "rpcs", "colorinterp") if k in extra}
    count, height, width = data.shape
    profile = dict(driver=driver, width=width, height=height, count=count, dtype=data.dtype.name, **extra)
    if crs is not None and "gcps" not in after and "rpcs" not in after:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        for name in ("descriptions", "scales", "offsets", "units", "colorinterp"):
            if name in after:
                setattr(ds, name, after[name])
        if "tags" in after:
            ds.update_tags(**after["tags"])
        for band, tags in enumerate(after.get("band_tags", ()), start=1):
            ds.update_tags(band, **tags)
        if "gcps" in after:
            ds.gcps = (after["gcps"], rasterio.crs.CRS.from_string("EPSG:4326"))
        if "rpcs" in after:
            ds.rpcs = after["rpcs"]
    return path


def run(src, dst, **options) -> tuple[dict, dict]:
    summary = run_local(RunSpec(src=str(src), dst=str(dst), model="bicubic", scale=options.pop("scale", 2.0),
                                **options))
    rows = {r["image_id"]: r for r in pq.read_table(f"{dst}/_manifest").to_pylist()}
    return summary, rows


def is_cog(path) -> bool:
    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    return valid and not errors


@pytest.fixture
def src(tmp_path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    return folder


# ------------------------------------------------------------------ GeoTIFF in, COG out


def test_a_geotiff_becomes_a_valid_cog_with_overviews_and_the_same_ground(src, tmp_path):
    data = bands(300, 280, 4)
    data[:, :40, :50] = 0  # a nodata corner
    write(src / "scene.tif", data, nodata=0, tiled=True, blockxsize=128, blockysize=128, compress="deflate",
          descriptions=("B02", "B03", "B04", "B08"), units=("", "", "", "reflectance"),
          scales=(1e-4,) * 4, offsets=(-0.1,) * 4, tags={"PROCESSING_BASELINE": "05.10"},
          band_tags=[{"WAVELENGTH": "490"}, {"WAVELENGTH": "560"}, {"WAVELENGTH": "665"}, {"WAVELENGTH": "842"}])
    summary, rows = run(src, tmp_path / "out")
    assert summary["ok"] == 1, summary["failures"]
    out = tmp_path / "out" / "scene.tif"
    assert is_cog(out)
    with rasterio.open(out) as ds:
        assert ds.is_tiled and ds.block_shapes == [(512, 512)] * 4
        assert ds.overviews(1) == [2]  # 600 x 560 pixels: one overview level fits a 512 block
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.compression.name == "deflate"
        assert (ds.height, ds.width, ds.count, ds.dtypes) == (600, 560, 4, ("uint16",) * 4)
        assert ds.crs.to_epsg() == 32633 and tuple(ds.transform)[:6] == (5.0, 0.0, 399960.0, 0.0, -5.0, 5000040.0)
        assert ds.nodata == 0 and ds.descriptions == ("B02", "B03", "B04", "B08")
        assert ds.units[3] == "reflectance" and ds.scales == (1e-4,) * 4 and ds.offsets == (-0.1,) * 4
        assert ds.tags()["PROCESSING_BASELINE"] == "05.10" and ds.tags(4)["WAVELENGTH"] == "842"
        pixels = ds.read()
    assert (pixels[:, :80, :100] == 0).all() and (pixels[:, 80:, :] > 0).all()  # nodata where it was, only there
    row = rows["scene.tif"]
    assert row["crs"] == "EPSG:32633 (WGS 84 / UTM zone 33N)" and row["nodata"] == "0"
    assert json.loads(row["transform_out"]) == [399960.0, 5.0, 0.0, 5000040.0, 0.0, -5.0]
    assert (row["out_width"], row["out_height"], row["out_format"]) == (560, 600, "tiff")


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_sample_type_and_band_count_round_trip(src, tmp_path, dtype):
    data = bands(40, 36, 5 if dtype != "uint8" else 1, dtype=dtype)
    if dtype == "uint8":
        data = (data // 20).astype(np.uint8)
    if dtype == "int16":
        data = data - 1500  # negative values too
    write(src / "scene.tif", data)
    summary, rows = run(src, tmp_path / "out")
    assert summary["ok"] == 1, summary["failures"]
    with rasterio.open(tmp_path / "out" / "scene.tif") as ds:
        assert (ds.count, ds.dtypes[0], ds.shape) == (data.shape[0], dtype, (80, 72))
        out = ds.read()
    if dtype == "int16":
        assert out.min() < 0
    assert rows["scene.tif"]["dtype"] == dtype and rows["scene.tif"]["channels"] == data.shape[0]


def test_raster_format_gtiff_writes_a_tiled_geotiff_without_overviews(src, tmp_path):
    write(src / "scene.tif", bands(300, 280, 3))
    summary, _rows = run(src, tmp_path / "out", raster_format="gtiff", raster_compress="zstd", raster_blocksize=256)
    assert summary["ok"] == 1, summary["failures"]
    with rasterio.open(tmp_path / "out" / "scene.tif") as ds:
        assert ds.is_tiled and ds.block_shapes[0] == (256, 256) and ds.overviews(1) == []
        assert ds.compression.name == "zstd" and "LAYOUT" not in ds.tags(ns="IMAGE_STRUCTURE")
        assert ds.crs.to_epsg() == 32633 and ds.transform.a == 5.0


def test_raster_output_options_come_from_the_command_line_and_enter_the_config_key():
    parse = build_parser().parse_args
    spec = config_from_args(parse(["run", "in/", "out/", "--raster-format", "gtiff", "--raster-compress", "lzw",
                                   "--raster-blocksize", "1024"]))
    assert (spec.raster_format, spec.raster_compress, spec.raster_blocksize) == ("gtiff", "lzw", 1024)
    default = config_from_args(parse(["run", "in/", "out/"]))
    assert (default.raster_format, default.raster_compress, default.raster_blocksize) == ("cog", "deflate", 512)
    resolved = {"tile": 0, "overlap": 8, "precision": "fp32"}
    model = type("M", (), {"sha256": "x", "name": "bicubic", "scale": 2})()
    assert spec.config_key(model, resolved) != default.config_key(model, resolved)
    with pytest.raises(ValueError, match="multiple of 16"):
        RunSpec(src="a", dst="b", raster_blocksize=100)


# ------------------------------------------------------------------ other inputs


def test_a_cog_input_is_read_and_written_again_as_a_cog(src, tmp_path):
    write(src / "cog.tif", bands(200, 220, 2), driver="COG", nodata=0, compress="deflate")
    assert is_cog(src / "cog.tif")
    summary, rows = run(src, tmp_path / "out")
    assert summary["ok"] == 1, summary["failures"]
    assert is_cog(tmp_path / "out" / "cog.tif")
    with rasterio.open(tmp_path / "out" / "cog.tif") as ds, rasterio.open(src / "cog.tif") as lr:
        assert ds.shape == (400, 440) and ds.transform.a == 5.0 and ds.crs == lr.crs
        np.testing.assert_allclose(ds.read(out_shape=(2, 200, 220), resampling=rasterio.enums.Resampling.average),
                                   lr.read(), atol=60)  # bicubic x2 averaged back: the input, within its noise


def test_a_jpeg2000_band_like_sentinel2s_is_upscaled_into_a_cog(src, tmp_path):
    data = bands(160, 150, 1, seed=4)
    write(src / "T33UUP_B04.jp2", data, driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES")
    summary, rows = run(src, tmp_path / "out")
    assert summary["ok"] == 1, summary["failures"]
    row = rows["T33UUP_B04.jp2"]
    assert row["src_format"] == "jp2" and row["dst_uri"].endswith("T33UUP_B04.tif")
    out = tmp_path / "out" / "T33UUP_B04.tif"
    assert is_cog(out)
    with rasterio.open(out) as ds:
        assert (ds.shape, ds.dtypes[0]) == ((320, 300), "uint16") and ds.crs.to_epsg() == 32633
        assert tuple(ds.transform)[:6] == (5.0, 0.0, 399960.0, 0.0, -5.0, 5000040.0)
        assert abs(float(ds.read(1).mean()) - float(data.mean())) < 5  # lossless JP2: the same values, upscaled


def test_gcps_and_rpcs_are_rescaled_with_the_pixels(src, tmp_path):
    gcps = [GroundControlPoint(row=r, col=c, x=15.0 + c * 1e-4, y=45.0 - r * 1e-4, z=0.0, id=str(n))
            for n, (r, c) in enumerate([(0, 0), (0, 50), (40, 0), (40, 50)])]
    write(src / "gcps.tif", bands(40, 50, 1), gcps=gcps)
    rpc = RPC(height_off=100, height_scale=500, lat_off=45.0, lat_scale=0.01, long_off=15.0, long_scale=0.01,
              line_off=20, line_scale=20, samp_off=25, samp_scale=25,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
              samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    write(src / "rpcs.tif", bands(40, 50, 1), rpcs=rpc)
    summary, _rows = run(src, tmp_path / "out", scale=4.0)
    assert summary["ok"] == 2, summary["failures"]
    with rasterio.open(tmp_path / "out" / "gcps.tif") as ds:
        points, crs = ds.gcps
        assert crs.to_epsg() == 4326
        assert [(p.row, p.col, p.x, p.y) for p in points] == [(g.row * 4, g.col * 4, g.x, g.y) for g in gcps]
    with rasterio.open(tmp_path / "out" / "rpcs.tif") as ds:
        out_rpc = ds.rpcs
    with RPCTransformer(rpc) as before, RPCTransformer(out_rpc) as after:
        for row, col in [(0, 0), (13, 41), (39.5, 49.5)]:  # the same ground under the same (corner) position
            assert after.xy(row * 4, col * 4, offset="ul") == pytest.approx(before.xy(row, col, offset="ul"),
                                                                            abs=1e-9)


def test_a_raster_in_memory_storage_is_read_through_fsspec(tmp_path):
    import fsspec

    path = write(tmp_path / "scene.tif", bands(40, 44, 3))
    fs = fsspec.filesystem("memory")
    fs.pipe("/geo-in/scene.tif", path.read_bytes())
    for threshold in (0, 1):  # in memory, and streamed window by window through rasterio's opener
        summary = run_local(RunSpec(src="memory://geo-in", dst=f"memory://geo-out-{threshold}", model="bicubic",
                                    scale=2.0, stream_threshold=threshold))
        assert summary["ok"] == 1, summary["failures"]
    outputs = [fs.cat_file(f"/geo-out-{t}/scene.tif") for t in (0, 1)]
    for data in outputs:
        with rasterio.io.MemoryFile(data) as memfile, memfile.open() as ds:
            assert ds.shape == (80, 88) and ds.crs.to_epsg() == 32633 and ds.transform.a == 5.0
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    with rasterio.io.MemoryFile(outputs[0]) as a, a.open() as ra, rasterio.io.MemoryFile(outputs[1]) as b, \
            b.open() as rb:
        np.testing.assert_array_equal(ra.read(), rb.read())


def test_a_streamed_geotiff_on_s3_is_read_by_ranges_and_written_as_a_cog(s3, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.setattr(streaming, "OUTPUT_TILE", 128)
    monkeypatch.setattr(streaming, "WINDOW_INPUT", 64)
    options, bucket = s3
    path = write(tmp_path / "scene.tif", bands(300, 260, 2), tiled=True, blockxsize=64, blockysize=64,
                 compress="deflate")
    s3fs.S3FileSystem(**options).put_file(str(path), f"{bucket}/in/scene.tif")
    summary = run_local(RunSpec(src=f"{bucket}/in", dst=str(tmp_path / "out"), model="bicubic", scale=2.0,
                                stream_threshold=1, storage_options=options))
    assert summary["ok"] == 1, summary["failures"]
    rows = pq.read_table(tmp_path / "out" / "_manifest").to_pylist()
    assert rows[0]["stream_windows"] == 5 * 5  # ceil(300 / 64) rows of ceil(260 / 64) windows
    out = tmp_path / "out" / "scene.tif"
    assert is_cog(out)
    with rasterio.open(out) as ds:
        assert ds.shape == (600, 520) and ds.overviews(1) == [2] and ds.transform.a == 5.0
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_a_streamed_geotiff_gives_the_same_cog_as_in_memory(src, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "OUTPUT_TILE", 128)
    monkeypatch.setattr(streaming, "WINDOW_INPUT", 64)
    data = bands(290, 270, 3, seed=2)
    data[:, 250:, :] = 0
    write(src / "scene.tif", data, nodata=0, tiled=True, blockxsize=32, blockysize=32,
          descriptions=("red", "green", "blue"))
    streamed, s_rows = run(src, tmp_path / "streamed", stream_threshold=100 * 100)
    memory, m_rows = run(src, tmp_path / "memory", stream_threshold=0)
    assert streamed["ok"] == memory["ok"] == 1
    assert s_rows["scene.tif"]["stream_windows"] > 1 and m_rows["scene.tif"]["stream_windows"] is None
    a, b = tmp_path / "streamed" / "scene.tif", tmp_path / "memory" / "scene.tif"
    assert is_cog(a) and is_cog(b)
    with rasterio.open(a) as sa, rasterio.open(b) as sb:
        assert sa.profile == sb.profile and sa.overviews(1) == sb.overviews(1) == [2]
        assert sa.descriptions == ("red", "green", "blue") and sa.nodata == 0
        np.testing.assert_array_equal(sa.read(), sb.read())
    for column in ("crs", "transform_out", "nodata", "bands", "radiometric", "lr_psnr"):
        assert s_rows["scene.tif"][column] == m_rows["scene.tif"][column], column


# ------------------------------------------------------------------ what is refused


def test_a_float64_raster_is_one_failed_row_naming_its_sample_type(src, tmp_path):
    write(src / "dem.tif", bands(20, 20, 1, dtype="float64"))
    write(src / "ok.tif", bands(20, 20, 1))
    summary, rows = run(src, tmp_path / "out")
    assert summary["ok"] == 1 and summary["failed"] == 1
    assert rows["dem.tif"]["error"] == (f"decode: {(src / 'dem.tif').as_uri()}: unsupported: sample type float64 "
                                        "(supported: uint8, uint16, int16, float32)")
    assert rows["dem.tif"]["error_type"] == "ImageDecodeError"


def test_a_truncated_geotiff_is_one_failed_row_with_gdals_reason(src, tmp_path):
    data = write(tmp_path / "whole.tif", bands(64, 64, 1), tiled=True, blockxsize=32, blockysize=32,
                 compress="deflate").read_bytes()
    (src / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    summary, rows = run(src, tmp_path / "out")
    assert summary["failed"] == 1
    error = rows["cut.tif"]["error"]
    assert rows["cut.tif"]["error_type"] == "ImageDecodeError" and "\n" not in error
    assert error.startswith(f"decode: {(src / 'cut.tif').as_uri()}: corrupt raster (")
    assert "TIFFReadEncodedTile() failed" in error  # what GDAL found wrong
    assert not (tmp_path / "out" / "cut.tif").exists()


def test_a_per_dataset_mask_comes_back_as_the_outputs_mask_in_memory_and_streamed(src, tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "OUTPUT_TILE", 64)
    monkeypatch.setattr(streaming, "WINDOW_INPUT", 32)
    data = bands(70, 60, 3, dtype="uint8", seed=5)
    mask = np.full((70, 60), 255, np.uint8)
    mask[:20, :25] = 0  # outside the footprint
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(src / "ortho.tif", "w", driver="GTiff", width=60, height=70, count=3, dtype="uint8",
                           crs=UTM33, transform=ORIGIN, tiled=True, blockxsize=32, blockysize=32) as ds:
            ds.write(data)
            ds.write_mask(mask)
    expected = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)  # nearest neighbour, as alpha
    for threshold in (0, 1):
        summary, rows = run(src, tmp_path / f"out-{threshold}", stream_threshold=threshold)
        assert summary["ok"] == 1, summary["failures"]
        with rasterio.open(tmp_path / f"out-{threshold}" / "ortho.tif") as ds:
            assert ds.count == 3 and ds.mask_flag_enums[0] == [rasterio.enums.MaskFlags.per_dataset]
            np.testing.assert_array_equal(ds.dataset_mask(), expected)
            assert ds.nodata is None and ds.shape == (140, 120)
        assert is_cog(tmp_path / f"out-{threshold}" / "ortho.tif")
        assert json.loads(rows["ortho.tif"]["bands"])["alpha"] == 3  # the mask, as the plan's alpha band
