"""The package's shape: one module per format family, each decode beside its encode, magic
bytes in one place, the public API re-exported, header-only reads without fake pixels."""

import importlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from pipeline import formats
from pipeline.formats import sniff, windows

from .builders import tiff

FORMATS_DIR = Path(formats.__file__).parent

PUBLIC = ("decode_image", "encode_image", "output_format", "DecodedImage", "ImageHeader", "ImageDecodeError",
          "ImageTooLargeError", "ImageEncodeError", "DEFAULT_MAX_PIXELS", "TIFF_MAGIC", "tiff_layout", "tiff_mode",
          "raster_tiff_options", "_tiff_dpi", "ORIENTATION", "_check_size")


@pytest.mark.parametrize("name", PUBLIC)
def test_the_public_api_is_re_exported(name):
    assert hasattr(formats, name)


@pytest.mark.parametrize("module, functions", [
    ("pillow", ("decode", "encode")),
    ("png", ("decode", "encode")),
    ("tiff", ("decode", "encode", "encode_raster", "route", "tiff_layout")),
    ("dicom", ("decode", "encode")),
    ("gdal", ("decode", "encode", "read_geo", "read_header", "WindowReader", "StreamWriter")),
    ("sniff", ("sniff", "not_an_image")),
    ("windows", ("read_header", "WindowReader")),
])
def test_each_family_has_its_module_with_decode_beside_encode(module, functions):
    loaded = importlib.import_module(f"pipeline.formats.{module}")
    for function in functions:
        assert callable(getattr(loaded, function)), (module, function)


def test_magic_bytes_live_in_sniff_only():
    assert formats.TIFF_MAGIC is sniff.TIFF_MAGIC and formats.sniff is sniff
    for path in FORMATS_DIR.glob("*.py"):
        if path.name == "sniff.py":
            continue
        text = path.read_text()
        for magic in (r"b\"\x89PNG", r"b\"\xff\xd8\xff", r"b\"GIF8", r"b\"II*", r"b\"MM\x00*", r"b\"DICM"):
            assert magic not in text, (path.name, magic)


@pytest.mark.parametrize("data, fmt", [
    (b"\x89PNG\r\n\x1a\n" + bytes(30), "png"), (b"\xff\xd8\xff\xe0", "jpeg"), (b"GIF89a", "gif"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"), (b"II*\x00", "tiff"), (b"MM\x00+", "tiff"), (b"BM", "bmp"),
    (bytes(128) + b"DICM", "dicom"), (b"<html>", None), (b"", None),
])
def test_sniff_names_the_format_from_the_magic_bytes(data, fmt):
    assert sniff.sniff(data) == fmt


def test_read_header_returns_a_header_without_pixels(tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((40, 30, 3), np.uint16), photometric="rgb", resolution=(300, 300),
                     resolutionunit="inch")
    with open(path, "rb") as fh:
        header = windows.read_header(fh, threshold=1, name="big.tif")
    assert isinstance(header, formats.ImageHeader)
    assert header.shape == (40, 30, 3) and header.dtype == np.dtype(np.uint16)
    assert (header.format, header.mode, header.raster) == ("tiff", "RGB;16", None)
    assert header.info["dpi"] == pytest.approx((300, 300)) and header.icc_profile is None
    assert not hasattr(header, "pixels")  # a header is never a fake array
    assert (header.has_alpha, header.color_channels) == (False, 3)


def test_raster_tiff_options_take_a_header_or_a_decoded_image_of_a_plain_raster_alike(tmp_path):
    data = tiff(np.zeros((40, 30, 4), np.uint8), photometric="minisblack", planarconfig="contig",
                extrasamples=["unspecified"] * 3)
    (tmp_path / "bands.tif").write_bytes(data)
    with open(tmp_path / "bands.tif", "rb") as fh:
        header = windows.read_header(fh, threshold=1, name="bands.tif")
    decoded = formats.decode_image(data)
    assert header.shape == decoded.shape and header.dtype == decoded.dtype
    assert formats.raster_tiff_options(header, 80, 60) == formats.raster_tiff_options(decoded, 80, 60)


def test_decoded_image_has_the_header_attributes_too():
    decoded = formats.decode_image(tiff(np.zeros((5, 6), np.float32)))
    for name in ("shape", "dtype", "format", "mode", "info", "icc_profile", "raster"):
        assert hasattr(decoded, name) and hasattr(formats.ImageHeader, "__dataclass_fields__")
    assert decoded.shape == (5, 6, 1) and decoded.dtype == np.float32


def test_encoders_reject_a_format_name_they_do_not_know_as_an_encode_error():
    pixels = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(formats.ImageEncodeError):
        formats.encode_image(pixels, formats.DecodedImage(pixels=pixels, format="exr", mode="RGB"))
