"""Decoding fidelity on generated hostile files: georeference through every decoder, YCbCr
JPEG, odd bit depths, damaged EXIF, 16-bit photos of a small range, nodata a type cannot hold."""

import contextlib
import io
import math

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline import raster
from pipeline.formats import ImageDecodeError, decode_image, encode_image, windows
from pipeline.inference.engine import Upscaler
from pipeline.models import load_model

from .builders import (
    GDAL_NODATA, PIXEL_SCALE, TIEPOINT, bilevel_rgb, exif, geo_tags, jpeg_with_app1, patch_short, rename_tag, smooth,
    tags_of, tiff, upscale_nearest,
)

RNG = np.random.default_rng(0)
rasterio = pytest.importorskip("rasterio")
MemoryFile = rasterio.io.MemoryFile
UTM18_ORIGIN = (30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)  # builders.geo_tags: 30 m pixels, EPSG:32618


@contextlib.contextmanager
def opened(data: bytes):
    """The file rasterio sees in `data`, open."""
    with MemoryFile(data) as memfile, memfile.open() as ds:
        yield ds


def gradient(height=40, width=48, channels=3, dtype=np.uint8) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    planes = [(xx * 5 + yy * 3 + 40 * c) % 256 for c in range(channels)]
    return np.stack(planes, axis=2).astype(dtype)


# ------------------------------------------------------------------ 1. georeference survives every decoder


def palette_colormap() -> np.ndarray:
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, 1] = (65535, 0, 0)
    cmap[:, 2] = (0, 65535, 0)
    cmap[:, 3] = (0, 0, 65535)
    return cmap


CLASSES = np.tile(np.arange(4, dtype=np.uint8).repeat(6), (20, 2))[:, :40]  # 20 x 40 class map

GEO_LAYOUTS = {  # decoder that reads it today: tifffile (palette, JPEG, low bits) or Pillow
    "palette": lambda nodata=None: tiff(CLASSES, geo=True, nodata=nodata, photometric="palette",
                                        colormap=palette_colormap()),
    "ycbcr-jpeg": lambda nodata=None: tiff(smooth(32, 48), geo=True, nodata=nodata, photometric="rgb",
                                           compression="jpeg"),
    "cmyk": lambda nodata=None: tiff(gradient(20, 24, 4), geo=True, nodata=nodata, photometric="separated"),
    "4-bit": lambda nodata=None: tiff(CLASSES * 5, geo=True, nodata=nodata, photometric="minisblack",
                                      bitspersample=4),
    "bilevel": lambda nodata=None: tiff(CLASSES % 2 == 1, geo=True, nodata=nodata, photometric="minisblack"),
    "min-is-white": lambda nodata=None: tiff(gradient(20, 24, 1)[..., 0], geo=True, nodata=nodata,
                                             photometric="miniswhite"),
}


@pytest.mark.parametrize("layout", GEO_LAYOUTS)
def test_georeference_survives_whichever_decoder_reads_the_geotiff(layout):
    data = GEO_LAYOUTS[layout]()
    decoded = decode_image(data, name=f"{layout}.tif")
    assert decoded.raster is not None and decoded.raster.kind == "geotiff", layout
    assert decoded.raster.geo.epsg == 32618 and decoded.raster.geo.transform == UTM18_ORIGIN, layout
    up = upscale_nearest(decoded.pixels)  # x2
    out = encode_image(up, decoded)
    with opened(out) as ds:  # pixel size halved, same origin, same CRS
        assert tuple(ds.transform)[:6] == (15.0, 0.0, 500000.0, 0.0, -15.0, 4000000.0), layout
        assert ds.crs.to_epsg() == 32618 and ds.count == up.shape[2] and ds.shape == up.shape[:2]
    again = decode_image(out, name="out.tif")
    assert again.raster is not None and again.raster.geo.georeferenced
    assert again.pixels.shape[:2] == up.shape[:2]


def test_georeferenced_cmyk_is_written_as_rgb_with_its_georeference_and_says_so():
    decoded = decode_image(GEO_LAYOUTS["cmyk"](), name="print.tif")
    assert decoded.mode == "CMYK" and decoded.pixels.shape == (20, 24, 3)
    assert any("written back as RGB" in note for note in decoded.info["notes"])
    with opened(encode_image(decoded.pixels, decoded)) as ds:
        assert [c.name for c in ds.colorinterp] == ["red", "green", "blue"]
        assert ds.crs.to_epsg() == 32618 and tuple(ds.transform)[:6] == UTM18_ORIGIN
        np.testing.assert_array_equal(np.moveaxis(ds.read(), 0, -1), decoded.pixels)


def test_a_georeferenced_pillow_tiff_keeps_its_stored_grid():
    data = tiff(gradient(20, 24, 4), geo=True, photometric="separated", extratags=[(274, "H", 1, 6, True)])
    assert decode_image(data).pixels.shape == (20, 24, 3)  # Orientation 6 not applied: the transform is the grid's


def test_palette_geotiff_is_expanded_to_rgb_through_its_colormap():
    decoded = decode_image(GEO_LAYOUTS["palette"](), name="landcover.tif")
    assert decoded.mode == "P" and decoded.pixels.shape == (20, 40, 3)
    colours = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
    for index, colour in colours.items():
        assert (decoded.pixels[CLASSES == index] == colour).all()
    assert decoded.info["notes"] == ["palette expanded to RGB"]


def test_palette_geotiff_nodata_index_becomes_the_alpha_band():
    decoded = decode_image(GEO_LAYOUTS["palette"](nodata=0), name="landcover.tif")
    assert decoded.pixels.shape == (20, 40, 4) and decoded.raster.alpha == 3
    np.testing.assert_array_equal(decoded.pixels[..., 3] == 0, CLASSES == 0)
    assert decoded.raster.nodata is None and decoded.raster.geo.nodata is None
    assert "nodata index 0 became an alpha band" in decoded.info["notes"][0]
    written = encode_image(decoded.pixels, decoded)
    assert GDAL_NODATA not in tags_of(written) and tags_of(written)[338] == (2,)  # ExtraSamples: unassociated alpha
    with opened(written) as ds:
        assert ds.nodata is None and [c.name for c in ds.colorinterp] == ["red", "green", "blue", "alpha"]


@pytest.mark.parametrize("layout", ["cmyk", "bilevel", "min-is-white"])
def test_pillow_decoded_geotiff_with_nodata_is_refused_clearly(layout):
    with pytest.raises(ImageDecodeError, match=rf"^{layout}\.tif: georeferenced .* TIFF is not supported: "
                                               r"its GDAL_NODATA 0"):
        decode_image(GEO_LAYOUTS[layout](nodata=0), name=f"{layout}.tif")


@pytest.mark.parametrize("layout", ["ycbcr-jpeg", "4-bit"])
def test_odd_geotiffs_that_gdal_decodes_keep_their_nodata(layout):
    decoded = decode_image(GEO_LAYOUTS[layout](nodata=0), name=f"{layout}.tif")
    assert decoded.raster.nodata == 0 and decoded.raster.geo.nodata == 0
    with opened(encode_image(decoded.pixels, decoded)) as ds:
        assert ds.nodata == 0


# ------------------------------------------------------------------ 2. YCbCr JPEG


@pytest.mark.parametrize("stream, tag", [((2, 2), (1, 1)), ((2, 2), (2, 1)), ((1, 1), (2, 2))])
def test_ycbcr_jpeg_whose_subsampling_tag_disagrees_with_the_stream_decodes(stream, tag):
    rgb = smooth(64, 48)
    data = patch_short(tiff(rgb, photometric="rgb", compression="jpeg", subsampling=stream), 530, *tag)
    decoded = decode_image(data, name="scan.tif")  # libtiff: "Improper JPEG sampling factors"
    assert decoded.pixels.shape == (64, 48, 3) and decoded.pixels.dtype == np.uint8
    assert np.abs(decoded.pixels.astype(int) - rgb).mean() < 3


@pytest.mark.parametrize("layout", [{}, {"tile": (16, 16)}, {"rowsperstrip": 16}])
def test_ycbcr_jpeg_tiffs_decode_to_rgb(layout):
    rgb = smooth(40, 56)
    decoded = decode_image(tiff(rgb, photometric="rgb", compression="jpeg", **layout), name="j.tif")
    assert decoded.mode == "RGB" and np.abs(decoded.pixels.astype(int) - rgb).mean() < 3


# ------------------------------------------------------------------ 3. odd bit depths, odd tags


@pytest.mark.parametrize("bits", range(2, 8))
@pytest.mark.parametrize("photometric, channels", [("minisblack", 1), ("rgb", 3)])
def test_2_to_7_bit_samples_are_scaled_to_8_bits(bits, photometric, channels):
    values = RNG.integers(0, 1 << bits, (9, 13, channels), dtype=np.uint8)
    data = tiff(values[..., 0] if channels == 1 else values, photometric=photometric, bitspersample=bits)
    decoded = decode_image(data, name="low.tif")
    top = (1 << bits) - 1
    expected = (values.astype(np.uint32) * 255 + top // 2) // top
    assert decoded.pixels.dtype == np.uint8 and decoded.raster is None
    np.testing.assert_array_equal(decoded.pixels, expected)
    assert decoded.mode == ("L" if channels == 1 else "RGB") + f";{bits}"
    assert decoded.info["notes"] == [f"{bits}-bit samples scaled to 8 bits"]
    assert decode_image(encode_image(decoded.pixels, decoded)).pixels.dtype == np.uint8  # written at 8 bits


def test_4_bit_samples_match_pillows_own_scaling():
    values = RNG.integers(0, 16, (6, 10), dtype=np.uint8)
    data = tiff(values, photometric="minisblack", bitspersample=4)
    np.testing.assert_array_equal(decode_image(data).pixels[..., 0], np.asarray(Image.open(io.BytesIO(data))))


def test_bilevel_rgb_decodes_to_0_and_255():
    values = RNG.integers(0, 2, (5, 7, 3)).astype(bool)
    decoded = decode_image(bilevel_rgb(values), name="b.tif")
    np.testing.assert_array_equal(decoded.pixels, values * 255)


def test_a_low_bit_raster_keeps_its_values_and_says_their_range():
    decoded = decode_image(GEO_LAYOUTS["4-bit"](), name="classes.tif")
    np.testing.assert_array_equal(decoded.pixels[..., 0], CLASSES * 5)
    assert decoded.raster.stored_range == (0.0, 15.0)


@pytest.mark.parametrize("bits", [(8, 8, 16), (5, 6, 5)])
def test_per_sample_bits_per_sample_is_unsupported_not_corrupt(bits):
    data = patch_short(tiff(np.zeros((4, 5, 3), np.uint8), photometric="rgb"), 258, *bits)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, name="odd.tif")
    assert str(caught.value) == f"odd.tif: unsupported: BitsPerSample differs between samples {bits}"
    assert caught.value.__cause__ is None  # our own message, not a wrapped AttributeError/TypeError


def test_float32_without_photometric_decodes_as_gray():
    values = np.linspace(-5, 5, 20, dtype=np.float32).reshape(4, 5)
    decoded = decode_image(rename_tag(tiff(values, photometric="minisblack"), 262), name="dem.tif")
    assert decoded.mode == "L;32F"
    np.testing.assert_array_equal(decoded.pixels[..., 0], values)
    assert decoded.info["notes"] == ["Photometric tag missing: read as MINISBLACK"]


def test_rgb_without_photometric_decodes_as_rgb():
    rgb = gradient(4, 5)
    decoded = decode_image(rename_tag(tiff(rgb, photometric="rgb"), 262))
    np.testing.assert_array_equal(decoded.pixels, rgb)


@pytest.mark.parametrize("case, says", [
    ("miniswhite16", "unsupported: MINISWHITE TIFF at 16 bits per sample"),
    ("float16", "unsupported: sample type float16"),
    ("int8", "unsupported: sample type int8"),
    ("palette2", "unsupported: palette TIFF with 2 samples"),
    ("compression", "unsupported: TIFF compression"),
])
def test_unsupported_tiffs_say_what_is_unsupported(case, says):
    make = {
        "miniswhite16": lambda: tiff(np.zeros((4, 4), np.uint16), photometric="miniswhite"),
        "float16": lambda: tiff(np.zeros((4, 4), np.float16)),
        "int8": lambda: tiff(np.zeros((4, 4), np.int8)),
        "palette2": lambda: patch_short(tiff(np.zeros((4, 4, 2), np.uint8), photometric="minisblack",
                                             planarconfig="contig"), 262, 3),
        "compression": lambda: patch_short(tiff(np.zeros((4, 4), np.uint8)), 259, 34676),
    }[case]
    with pytest.raises(ImageDecodeError, match=rf"^x\.tif: {says}"):
        decode_image(make(), name="x.tif")


# ------------------------------------------------------------------ 4. damaged EXIF


BAD_EXIF = {
    "truncated": exif(orientation=1, artist="a long enough artist name")[:20],
    "bad byte order": b"Exif\x00\x00XX*\x00\x08\x00\x00\x00",
    "IFD beyond the block": b"Exif\x00\x00II*\x00\xff\xff\x00\x00",
    "huge entry count": b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(20),
    "random": b"Exif\x00\x00" + np.random.default_rng(1).bytes(200),
}


@pytest.mark.parametrize("case", BAD_EXIF)
def test_jpeg_with_damaged_exif_is_decoded_with_the_exif_dropped_and_said(case):
    data = jpeg_with_app1(gradient(20, 30), BAD_EXIF[case])
    decoded = decode_image(data, name="photo.jpg")
    assert decoded.pixels.shape == (20, 30, 3) and decoded.exif is None
    assert len(decoded.info["notes"]) == 1 and decoded.info["notes"][0].startswith("EXIF dropped: ")
    out = encode_image(decoded.pixels, decoded)
    assert "exif" not in Image.open(io.BytesIO(out)).info


def test_truncated_exif_still_turns_the_image_by_its_readable_orientation():
    block = exif(orientation=6, artist="x" * 40)
    data = jpeg_with_app1(gradient(20, 30), block[: len(block) // 2 + 4])
    decoded = decode_image(data, name="phone.jpg")
    assert decoded.pixels.shape == (30, 20, 3) and decoded.exif is None
    assert decoded.info["notes"][0].endswith("its Orientation 6 was applied")


def test_sound_exif_is_carried_byte_for_byte_and_adds_no_note():
    block = exif(orientation=1, artist="archive")
    decoded = decode_image(jpeg_with_app1(gradient(8, 8), block))
    assert decoded.exif == block and "notes" not in decoded.info


# ------------------------------------------------------------------ 5. 16-bit photos of a small range


def small_range_photo() -> np.ndarray:
    """A 16-bit scan using 291..694 of 0..65535, with texture."""
    yy, xx = np.mgrid[0:40, 0:48]
    base = 291 + 403 * (0.5 + 0.5 * np.sin(xx / 4.0) * np.cos(yy / 6.0))
    rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=2)
    return np.rint(rgb).astype(np.uint16)


def _sane(out: np.ndarray, pixels: np.ndarray, widen: float = 0.03) -> bool:
    lo, hi = int(pixels.min()), int(pixels.max())
    margin = widen * (hi - lo)
    return out.min() >= lo - margin and out.max() <= hi + margin


def test_16_bit_photo_of_a_small_range_stays_in_range_through_the_engine_with_bicubic():
    pixels = small_range_photo()
    decoded = decode_image(encode_image(pixels, decode_image(tiff(pixels, photometric="rgb")), "png"))
    assert decoded.pixels.min() == 291 and decoded.pixels.max() == 694 and decoded.pixels.dtype == np.uint16
    out = Upscaler(load_model("bicubic", scale=2), device="cpu").upscale([decoded.pixels], 2)[0]
    assert out.dtype == np.uint16 and _sane(out, pixels)


@pytest.mark.parametrize("model", ["bicubic", "edsr-x2"])
def test_16_bit_photo_mapped_by_its_own_range_stays_in_range_with_a_cnn(model):
    pixels = small_range_photo()
    upscaler = Upscaler(load_model(model, scale=2) if model == "bicubic" else load_model(model), device="cpu")
    plan = raster.plan_for(pixels, None, photos="minmax")
    assert plan.ranges[0] == (291.0, 694.0)
    out = plan.restore(upscaler.upscale(plan.inputs(pixels, None), 2), pixels, None, (80, 96))
    assert out.dtype == np.uint16 and _sane(out, pixels, widen=0.0)
    assert np.abs(out[::2, ::2].astype(int) - pixels).mean() < 20  # and it is the image, not noise


def test_16_bit_photo_through_a_run_with_a_cnn_stays_in_range(tmp_path):
    from pipeline.job.local import run_local
    from pipeline.spec import RunSpec

    pixels = small_range_photo()
    (tmp_path / "src").mkdir()
    import imagecodecs

    (tmp_path / "src" / "scan.png").write_bytes(imagecodecs.png_encode(pixels))
    summary = run_local(RunSpec(src=str(tmp_path / "src"), dst=str(tmp_path / "dst"), model="edsr-x2"))
    assert summary["ok"] == 1
    out = decode_image((tmp_path / "dst" / "scan.png").read_bytes()).pixels
    assert out.dtype == np.uint16 and _sane(out, pixels)


# ------------------------------------------------------------------ 6. nodata the type cannot hold


def test_uint8_rgba_geotiff_with_nodata_minus_10000_decodes_plans_and_restores():
    rgba = gradient(24, 32, 4)
    rgba[..., 3] = 255
    rgba[:6, :, 3] = 0  # transparent rows: the mask
    data = tiff(rgba, geo=True, nodata=-10000, photometric="rgb", extrasamples=["unassalpha"])
    decoded = decode_image(data, name="rgba.tif")
    assert decoded.raster.nodata is None and decoded.raster.alpha == 3  # GDAL ignores a nodata no uint8 can be
    plan = raster.plan_for(decoded.pixels, decoded.raster)
    assert plan.nodata is None  # no uint8 pixel can be -10000: nothing to match
    valid = plan.valid(decoded.pixels)
    assert valid is not None and not valid[:6].any() and valid[6:].all()
    upscaler = Upscaler(load_model("bicubic", scale=2), device="cpu")
    out = plan.restore(upscaler.upscale(plan.inputs(decoded.pixels, valid), 2), decoded.pixels, valid, (48, 64))
    assert out.dtype == np.uint8 and (out[:12, :, 3] == 0).all() and (out[12:, :, 3] == 255).all()
    written = encode_image(out, decoded)
    assert GDAL_NODATA not in tags_of(written)
    again = decode_image(written)
    assert again.raster.nodata is None and again.raster.alpha == 3


@pytest.mark.parametrize("dtype, nodata", [(np.uint8, -10000), (np.uint16, 70000), (np.int16, 0.5),
                                           (np.float32, 1e40), (np.uint8, float("nan")), (np.uint8, float("inf"))])
def test_nodata_outside_the_type_never_raises_in_masking_statistics_or_restore(dtype, nodata):
    pixels = gradient(12, 16, 2, np.uint8).astype(dtype)
    info = raster.RasterInfo(kind="tiff", bands=2, nodata=nodata)
    plan = raster.plan_for(pixels, info)
    assert plan.nodata is None
    assert raster.valid_mask(pixels, nodata, None) is None
    valid = np.ones(pixels.shape[:2], bool)
    valid[0, 0] = False  # one invalid pixel (from an alpha band, say): restore must not write nodata into it
    out = plan.restore(plan.inputs(pixels, valid), pixels, valid, (12, 16))
    assert out.dtype == dtype


def test_float32_nodata_is_compared_as_float32_holds_it():
    pixels = np.full((4, 4, 1), np.float32(0.1))
    pixels[0, 0] = 5.0
    assert raster.usable_nodata(0.1, np.float32) == float(np.float32(0.1))
    assert raster.valid_mask(pixels, 0.1, None).sum() == 1  # 0.1 as float64 would match no float32 pixel


def test_window_reader_fill_that_the_type_cannot_hold_is_zero(tmp_path):
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(path, np.full((64, 64), 9, np.uint8), tile=(32, 32), extratags=geo_tags(-10000))
    with tifffile.TiffFile(path) as tif:
        reader = windows.WindowReader(tif.pages[0], fill=-10000)
        assert reader.fill == 0 and math.isfinite(reader.fill)
        assert (reader.read(0, 64, 0, 64) == 9).all()


def test_a_float_output_equal_to_nodata_is_moved_off_it():
    pixels = np.full((6, 6, 1), 5.0, np.float32)
    pixels[:2] = -9999.0
    info = raster.RasterInfo(kind="geotiff", bands=1, nodata=-9999.0)
    plan = raster.plan_for(pixels, info)
    valid = plan.valid(pixels)
    unit = plan.inputs(pixels, valid)
    unit[0][...] = 0.0  # a model output of 0 everywhere ...
    plan.ranges[0] = (-9999.0, 5.0)  # ... in a range whose bottom is the nodata value
    out = plan.restore(unit, pixels, valid, (6, 6))
    assert (out[:2] == -9999.0).all()  # nodata stays nodata
    assert (out[2:] != -9999.0).all() and np.allclose(out[2:], -9999.0, atol=0.01)  # moved just off it
