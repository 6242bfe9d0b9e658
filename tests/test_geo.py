"""GeoTIFF and raster TIFF: bit depth, bands, georeferencing, nodata, band modes, radiometric
scaling, metrics, on rasterio's real sample files (../shared) and on generated rasters; outputs
checked as rasterio (GDAL) reads them."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import torch

rasterio = pytest.importorskip("rasterio")

from pipeline import metrics, raster
from pipeline.formats import gdal
from pipeline.inference.engine import Upscaler
from pipeline.formats import decode_image, encode_image
from pipeline.models import LoadedModel, load_model
from pipeline.inference.resize import imresize
from pipeline.job.local import run_local
from pipeline.spec import RunSpec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GEO = SHARED / "data" / "geo"
needs_geo = pytest.mark.skipif(not (GEO / "RGB.byte.tif").exists(), reason="../shared/data/geo (rasterio samples) absent")

UTM18 = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32618, 3076, 0, 1, 9001)


def geotiff(array, *, nodata=None, pixel=(30.0, 30.0), origin=(500000.0, 4000000.0), metadata=None,
            raster_type=1, **options) -> bytes:
    keys = list(UTM18)
    keys[11] = raster_type
    tags = [(33550, 12, 3, (pixel[0], pixel[1], 0.0), True),
            (33922, 12, 6, (0.0, 0.0, 0.0, origin[0], origin[1], 0.0), True),
            (34735, 3, len(keys), tuple(keys), True)]
    if nodata is not None:
        tags.append((42113, 2, 0, str(nodata), True))
    if metadata:
        tags.append((42112, 2, 0, metadata, True))
    out = io.BytesIO()
    tifffile.imwrite(out, array, extratags=tags, metadata=None, **options)
    return out.getvalue()


def meta_of(path_or_bytes) -> dict:
    """What GDAL reads of a file: size, type, georeferencing, nodata, band metadata, layout."""
    with rasterio.io.MemoryFile(path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()) \
            as memfile, memfile.open() as ds:
        return {"shape": (ds.height, ds.width, ds.count), "dtype": ds.dtypes[0], "transform": tuple(ds.transform)[:6],
                "crs": ds.crs.to_epsg() if ds.crs else None, "nodata": ds.nodata,
                "colorinterp": [c.name for c in ds.colorinterp], "band_tags": ds.tags(1), "tags": ds.tags(),
                "tiled": ds.is_tiled, "overviews": ds.overviews(1)}


def rows_by_image(dst) -> dict:
    return {r["image_id"]: r for r in pq.read_table(Path(dst) / "_manifest").to_pylist()}


# ------------------------------------------------------------------ the real sample files


@pytest.fixture(scope="module")
def sample_runs(tmp_path_factory):
    """RGB.byte.tif, shade.tif and float32.tif x4, RGBA.uint16.tif x2 (bicubic), local executor."""
    if not (GEO / "RGB.byte.tif").exists():
        pytest.skip("../shared/data/geo (rasterio samples) absent")
    root = tmp_path_factory.mktemp("geo")
    (root / "x4").mkdir()
    (root / "x2").mkdir()
    for name in ("RGB.byte.tif", "shade.tif", "float32.tif"):
        (root / "x4" / name).write_bytes((GEO / name).read_bytes())
    (root / "x2" / "RGBA.uint16.tif").write_bytes((GEO / "RGBA.uint16.tif").read_bytes())
    for scale in ("x4", "x2"):
        summary = run_local(RunSpec(src=str(root / scale), dst=str(root / f"out-{scale}"), model="bicubic",
                                      scale=float(scale[1])))
        assert summary["failed"] == 0, summary["failures"]
    return root


@needs_geo
def test_landsat_x4_has_a_quarter_of_the_pixel_size_the_same_origin_crs_and_nodata(sample_runs):
    src, out = meta_of(GEO / "RGB.byte.tif"), meta_of(sample_runs / "out-x4" / "RGB.byte.tif")
    assert out["shape"] == (718 * 4, 791 * 4, 3) and out["dtype"] == "uint8"
    np.testing.assert_allclose(out["transform"], (300.0379266750948 / 4, 0.0, 101985.0, 0.0, -300.041782729805 / 4,
                                                  2826915.0), rtol=1e-12)
    assert out["crs"] == src["crs"] == 32618  # WGS 84 / UTM zone 18N, unchanged
    assert out["nodata"] == src["nodata"] == 0
    assert out["colorinterp"] == src["colorinterp"] == ["red", "green", "blue"]
    # the statistics of the input's pixels are dropped: GDAL would trust them for the output's
    assert "STATISTICS_MEAN" in src["band_tags"] and not any(k.startswith("STATISTICS") for k in out["band_tags"])
    row = rows_by_image(sample_runs / "out-x4")["RGB.byte.tif"]
    assert row["crs"] == "EPSG:32618 (WGS 84 / UTM zone 18N)"
    assert json.loads(row["transform_in"]) == [101985.0, 300.0379266750948, 0.0, 2826915.0, 0.0, -300.041782729805]
    np.testing.assert_allclose(json.loads(row["transform_out"]),
                               [101985.0, 300.0379266750948 / 4, 0.0, 2826915.0, 0.0, -300.041782729805 / 4])
    assert row["nodata"] == "0"


@needs_geo
def test_landsat_output_pixels_derived_from_nodata_are_nodata_and_the_others_are_not(sample_runs):
    lr = tifffile.imread(GEO / "RGB.byte.tif")
    sr = tifffile.imread(sample_runs / "out-x4" / "RGB.byte.tif")
    nodata_in = (lr == 0).all(axis=2)
    expected = np.repeat(np.repeat(nodata_in, 4, axis=0), 4, axis=1)  # every output pixel's centre lies in one input pixel
    np.testing.assert_array_equal((sr == 0).all(axis=2), expected)
    assert 0.2 < expected.mean() < 0.5  # the scene's black collar is a real share of the image


@needs_geo
def test_rgba_uint16_x2_stays_uint16_with_4_bands_and_the_alpha_band_as_a_mask(sample_runs):
    src = meta_of(GEO / "RGBA.uint16.tif")
    out = meta_of(sample_runs / "out-x2" / "RGBA.uint16.tif")
    assert out["shape"] == (822, 1268, 4) and out["dtype"] == "uint16"
    assert out["colorinterp"] == src["colorinterp"] == ["blue", "green", "red", "alpha"]
    assert out["crs"] == src["crs"] == 32612
    lr = tifffile.imread(GEO / "RGBA.uint16.tif")
    sr = tifffile.imread(sample_runs / "out-x2" / "RGBA.uint16.tif")
    assert (sr[..., :3] == 10000).all()  # the file's three data bands are constant 10000: so is the output
    np.testing.assert_array_equal(sr[..., 3], np.repeat(np.repeat(lr[..., 3], 2, axis=0), 2, axis=1))
    row = rows_by_image(sample_runs / "out-x2")["RGBA.uint16.tif"]
    bands = json.loads(row["bands"])
    assert bands["model_inputs"] == [[2, 1, 0]]  # GDAL says Blue, Green, Red: the model gets R, G, B
    assert bands["alpha"] == 3 and bands["names"] == ["Blue", "Green", "Red", "Alpha"]
    assert row["dtype"] == "uint16" and row["channels"] == 4 and row["src_mode"] == "4B;16"


@needs_geo
def test_tiled_shade_tif_decodes_like_tifffile_and_keeps_its_nodata(sample_runs):
    decoded = decode_image((GEO / "shade.tif").read_bytes(), name="shade.tif")
    np.testing.assert_array_equal(decoded.pixels[..., 0], tifffile.imread(GEO / "shade.tif"))
    assert decoded.raster.nodata == 255 and decoded.raster.geo.crs().startswith("EPSG:3857")
    out = meta_of(sample_runs / "out-x4" / "shade.tif")
    assert out["shape"] == (4096, 4096, 1) and out["tiled"] and out["nodata"] == 255
    np.testing.assert_allclose((out["transform"][0], -out["transform"][4]), (9.5546285343 / 4, 9.5546285343 / 4))


@needs_geo
def test_float32_tif_with_a_model_transformation_is_upscaled_and_its_transform_rescaled(sample_runs):
    lr = tifffile.imread(GEO / "float32.tif")
    sr = tifffile.imread(sample_runs / "out-x4" / "float32.tif")
    assert sr.dtype == np.float32 and sr.shape == (8, 12)
    assert meta_of(sample_runs / "out-x4" / "float32.tif")["transform"] == (25.0, 0.0, 0.0, 0.0, 25.0, 0.0)
    row = rows_by_image(sample_runs / "out-x4")["float32.tif"]
    ranges = json.loads(row["radiometric"])["ranges"]
    assert ranges == [[float(lr.min()), float(lr.max())]]
    assert np.isfinite(row["lr_psnr"])


# ------------------------------------------------------------------ georeferencing arithmetic


@pytest.mark.parametrize("raster_type", [1, 2])  # GTRasterTypeGeoKey: PixelIsArea, PixelIsPoint
def test_rescaled_georeferencing_covers_the_same_ground(raster_type):
    data = geotiff(np.zeros((10, 20), np.uint8), pixel=(30.0, 20.0), raster_type=raster_type)
    decoded = decode_image(data)
    before = decoded.raster.geo.geotransform()
    written = encode_image(np.zeros((20, 60, 1), np.uint8), decoded)  # x3 across, x2 down
    out = meta_of(written)
    a, b, c, d, e, f = out["transform"]
    assert (c, f) == pytest.approx((before[0], before[3]))  # same corner
    assert (a, e) == pytest.approx((10.0, -10.0))
    # the far corner too: 60 x 20 new pixels of 10 m cover 20 x 10 old pixels of 30 x 20 m
    assert c + 60 * a == pytest.approx(before[0] + 20 * before[1])
    if raster_type == 2:  # PixelIsPoint: GDAL reads the corner half a pixel before the tie point, and writes it back
        assert before[0] == 500000.0 - 15.0 and before[3] == 4000000.0 + 10.0
        assert out["tags"]["AREA_OR_POINT"] == "Point"
        with tifffile.TiffFile(io.BytesIO(written)) as tif:  # the first new pixel's centre, in map units
            assert tif.pages[0].tags[33922].value[3:5] == pytest.approx((before[0] + 5.0, before[3] - 5.0))


def test_a_rotated_transform_is_rescaled_column_and_row_terms_apart():
    info = gdal.GeoInfo(transform=(10.0, 2.0, 1000.0, 1.0, -10.0, 5000.0))  # rasterio's (a, b, c, d, e, f)
    assert info.scaled(2.0, 4.0).transform == (5.0, 0.5, 1000.0, 0.5, -2.5, 5000.0)


# ------------------------------------------------------------------ nodata, bands, radiometric scaling


def test_nodata_does_not_bleed_into_valid_pixels():
    pixels = np.full((40, 50), 5000, np.uint16)
    pixels[:, :20] = 0  # nodata strip
    decoded = decode_image(geotiff(pixels, nodata=0))
    plan = raster.plan_for(decoded.pixels, decoded.raster)
    valid = plan.valid(decoded.pixels)
    up = Upscaler(load_model("bicubic", scale=2), device="cpu")
    out = plan.restore(up.upscale(plan.inputs(decoded.pixels, valid), 2), decoded.pixels, valid, (80, 100))
    assert (out[:, :40] == 0).all()
    assert (out[:, 40:] == 5000).all()  # no dark fringe: the nodata value never reached the model
    # the naive way (nodata as data) drags the edge toward 0
    naive = up.upscale([decoded.pixels], 2)[0]
    assert naive[:, 40:].min() < 4900


def test_a_valid_output_pixel_equal_to_nodata_in_every_band_is_moved_off_it():
    pixels = np.full((8, 8, 2), 7, np.uint8)
    pixels[:4] = 0  # nodata rows
    pixels[4:, :, 0] = 1  # valid: band 0 is 1 ...
    pixels[4:, :, 1] = 0  # ... band 1 equals nodata
    decoded = decode_image(geotiff(pixels, nodata=0, photometric="minisblack", planarconfig="contig"))
    plan = raster.plan_for(decoded.pixels, decoded.raster, radiometric="dtype")
    valid = plan.valid(decoded.pixels)
    unit = plan.inputs(decoded.pixels, valid)
    unit[0][..., 0] = 0.0  # a model output of 0 in both bands for valid pixels
    out = plan.restore(unit, decoded.pixels, valid, (8, 8))
    assert (out[:4] == 0).all()
    assert (out[4:, :, 0] == 1).all() and (out[4:, :, 1] == 0).all()  # not read as nodata


def _mixing_model(scale: int = 2) -> LoadedModel:
    """A random conv that mixes R, G and B, so band modes are told apart."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 3 * scale * scale, 3, padding=1), torch.nn.PixelShuffle(scale))
    return LoadedModel(name="mix", arch="test", module=module, scale=scale, in_channels=3, out_channels=3, overlap=4)


def _upscale_with(plan, pixels, upscaler, scale=2):
    valid = plan.valid(pixels)
    h, w = pixels.shape[:2]
    return plan.restore(upscaler.upscale(plan.inputs(pixels, valid), scale), pixels, valid, (h * scale, w * scale))


@pytest.mark.parametrize("band_mode", ["rgb+gray", "each"])
def test_band_modes_decide_which_bands_influence_which(band_mode):
    rng = np.random.default_rng(1)
    pixels = rng.integers(100, 4000, (12, 10, 5), dtype=np.uint16)
    other = pixels.copy()
    other[..., 1] = rng.integers(100, 4000, (12, 10), dtype=np.uint16)  # change band 1 only
    decoded = decode_image(geotiff(pixels, photometric="minisblack", planarconfig="contig"))
    upscaler = Upscaler(_mixing_model(), device="cpu", tile=0)
    plan = raster.plan_for(pixels, decoded.raster, band_mode=band_mode, radiometric="dtype")
    a, b = _upscale_with(plan, pixels, upscaler), _upscale_with(plan, other, upscaler)
    assert a.shape == (24, 20, 5) and a.dtype == np.uint16
    changed = [bool((a[..., k] != b[..., k]).any()) for k in range(5)]
    if band_mode == "each":
        assert plan.groups == [(0,), (1,), (2,), (3,), (4,)]
        assert changed == [False, True, False, False, False]
    else:
        assert plan.groups == [(0, 1, 2), (3,), (4,)]
        assert changed == [True, True, True, False, False]  # band 1 is in the RGB triplet only


def test_radiometric_minmax_maps_valid_data_to_the_unit_range_and_back_exactly():
    rng = np.random.default_rng(2)
    pixels = rng.integers(300, 3900, (16, 16, 4), dtype=np.uint16)
    pixels[:3] = 0  # nodata
    decoded = decode_image(geotiff(pixels, nodata=0, photometric="minisblack", planarconfig="contig"))
    plan = raster.plan_for(decoded.pixels, decoded.raster)
    assert plan.radiometric == "minmax"  # auto for uint16
    lo = int(pixels[3:, :, :3].min())
    hi = int(pixels[3:, :, :3].max())
    assert plan.ranges[:3] == [(lo, hi)] * 3  # the RGB triplet shares one range
    assert plan.ranges[3] == (int(pixels[3:, :, 3].min()), int(pixels[3:, :, 3].max()))
    valid = plan.valid(decoded.pixels)
    inputs = plan.inputs(decoded.pixels, valid)
    assert min(float(i.min()) for i in inputs) == 0.0 and max(float(i.max()) for i in inputs) == 1.0
    np.testing.assert_array_equal(plan.restore(inputs, decoded.pixels, valid, (16, 16)), pixels)  # reversible
    recorded = json.loads(plan.radiometric_json())
    assert recorded["mode"] == "minmax" and recorded["ranges"][0] == [lo, hi]
    dtype_plan = raster.plan_for(decoded.pixels, decoded.raster, radiometric="dtype")
    assert dtype_plan.ranges == [(0.0, 65535.0)] * 4


def test_int16_raster_keeps_negative_values_and_its_type():
    pixels = np.linspace(-3000, 2500, 20 * 24).reshape(20, 24).astype(np.int16)
    decoded = decode_image(geotiff(pixels, nodata=-32768))
    assert decoded.pixels.dtype == np.int16 and decoded.mode == "L;16S"
    assert decoded.raster.nodata == -32768
    np.testing.assert_array_equal(decode_image(encode_image(decoded.pixels, decoded)).pixels, decoded.pixels)
    plan = raster.plan_for(decoded.pixels, decoded.raster)
    out = _upscale_with(plan, decoded.pixels, Upscaler(load_model("bicubic", scale=2), device="cpu"))
    assert out.dtype == np.int16 and out.min() < -2900 and out.max() > 2400
    expected = imresize(pixels.astype(np.float64), 2.0)  # a linear ramp: bicubic keeps it
    np.testing.assert_allclose(out[4:-4, 4:-4, 0], expected[4:-4, 4:-4], atol=1)


def test_engine_takes_int16_by_its_full_range_and_gives_int16_back():
    pixels = np.array([[-32768, -1000], [0, 32767]], np.int16).repeat(8, axis=0).repeat(8, axis=1)
    out = Upscaler(load_model("bicubic", scale=2), device="cpu").upscale([pixels], 2)[0]
    assert out.dtype == np.int16 and out.shape == (32, 32, 1)
    assert out[0, 0, 0] == -32768 and out[-1, -1, 0] == 32767 and out[0, -1, 0] == -1000 and out[-1, 0, 0] == 0


def test_png_output_of_a_geotiff_is_refused_with_the_way_out(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "scene.tif").write_bytes(geotiff(np.full((8, 8), 9, np.uint8)))
    summary = run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), scale=2, format="png"))
    assert summary["failed"] == 1
    assert "only TIFF keeps this raster's georeferencing" in summary["failures"][0]["error"]
    assert "--format tiff" in summary["failures"][0]["error"]


def test_bad_band_mode_is_refused():
    with pytest.raises(ValueError, match="band mode must be one of rgb\\+gray, each"):
        RunSpec(src="a", dst="b", band_mode="rgb")


# ------------------------------------------------------------------ metrics


def test_lr_psnr_of_a_16_bit_raster_is_computed_on_its_native_values(tmp_path):
    yy, xx = np.mgrid[0:32, 0:40]
    pixels = (1000 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + 10 * xx).astype(np.uint16)  # 12-bit-ish data
    src = tmp_path / "src"
    src.mkdir()
    (src / "dem.tif").write_bytes(geotiff(pixels))
    run_local(RunSpec(src=str(src), dst=str(tmp_path / "dst"), scale=2))
    row = rows_by_image(tmp_path / "dst")["dem.tif"]
    sr = tifffile.imread(tmp_path / "dst" / "dem.tif")
    down = imresize(sr.astype(np.float64), output_size=(32, 40))
    expected = metrics.psnr(down, pixels.astype(np.float64), data_range=65535)
    assert row["lr_psnr"] == pytest.approx(expected, abs=1e-9)
    eight_bit = metrics.psnr(np.round(down / 257), np.round(pixels / 257.0), data_range=255)
    assert abs(row["lr_psnr"] - eight_bit) > 1  # not what an 8-bit conversion would say


def test_reference_gives_per_band_psnr_and_the_spectral_angle(tmp_path):
    yy, xx = np.mgrid[0:48, 0:40].astype(np.float64)
    hr = np.stack([2000 + 800 * np.sin(xx / (5 + k)) * np.cos(yy / (7 - k)) + 100 * k for k in range(4)], axis=2)
    hr = hr.astype(np.uint16)
    lr = imresize(hr, output_size=(24, 20))
    (tmp_path / "src").mkdir()
    (tmp_path / "hr").mkdir()
    (tmp_path / "src" / "scene.tif").write_bytes(geotiff(lr, photometric="minisblack", planarconfig="contig"))
    (tmp_path / "hr" / "scene.tif").write_bytes(geotiff(hr, photometric="minisblack", planarconfig="contig"))
    run_local(RunSpec(src=str(tmp_path / "src"), dst=str(tmp_path / "dst"), scale=2,
                        reference=str(tmp_path / "hr")))
    row = rows_by_image(tmp_path / "dst")["scene.tif"]
    sr = tifffile.imread(tmp_path / "dst" / "scene.tif")
    per_band = json.loads(row["psnr_bands"])
    assert len(per_band) == 4
    for k in range(4):
        assert per_band[k] == pytest.approx(metrics.psnr(sr[2:-2, 2:-2, k], hr[2:-2, 2:-2, k], data_range=65535))
    assert row["sam"] == pytest.approx(metrics.sam_degrees(sr[2:-2, 2:-2], hr[2:-2, 2:-2]))
    assert 0 < row["sam"] < 1 and min(per_band) > 60  # smooth bands: bicubic gets close


# ------------------------------------------------------------------ the Ray executor


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_geo
def test_landsat_through_the_ray_executor_matches_the_local_executor(sample_runs, local_ray, tmp_path):
    from pipeline.job.ray import RayOptions, run_ray

    src = tmp_path / "src"
    src.mkdir()
    (src / "RGB.byte.tif").write_bytes((GEO / "RGB.byte.tif").read_bytes())
    summary = run_ray(RunSpec(src=str(src), dst=str(tmp_path / "dst"), model="bicubic", scale=4),
                      RayOptions(workers=1))
    assert summary["ok"] == 1, summary["failures"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "dst" / "RGB.byte.tif"),
                                  tifffile.imread(sample_runs / "out-x4" / "RGB.byte.tif"))
    assert meta_of(tmp_path / "dst" / "RGB.byte.tif") == meta_of(sample_runs / "out-x4" / "RGB.byte.tif")
    ray_row = rows_by_image(tmp_path / "dst")["RGB.byte.tif"]
    local_row = rows_by_image(sample_runs / "out-x4")["RGB.byte.tif"]
    for column in ("crs", "transform_in", "transform_out", "nodata", "bands", "radiometric", "lr_psnr"):
        assert ray_row[column] == local_row[column], column
