"""Hostile inputs, generated here: each either works or gives a `failed` row with an
error type and message; the run never crashes and every good image is upscaled,
through both executors."""

import io
import json
import os
import struct
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image, ImageCms

from pipeline import formats
from pipeline.cli import main


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb's calling card)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    iend = b"IEND"
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
            + struct.pack(">I", 0) + iend + struct.pack(">I", zlib.crc32(iend)))


def bad_crc_png() -> bytes:
    data = bytearray(save(photo(8, 8), "PNG"))
    data[29] ^= 0xFF  # IHDR's CRC
    return bytes(data)


def corrupt_tile_tiff() -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((64, 64, 3), 120, np.uint8), tile=(32, 32), compression="zlib")
    data = bytearray(buffer.getvalue())
    for i in range(200, 260):  # scribble over compressed tile data
        data[i] ^= 0x5A
    return bytes(data)


def animated_gif() -> bytes:
    frames = [photo(12, 10, "P"), photo(12, 10, "P").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(photo(20, 10), "JPEG", exif=exif.tobytes())


def palette_with_transparency() -> bytes:
    image = photo(10, 10, "P")
    return save(image, "PNG", transparency=0)


def rgba16_png() -> bytes:
    import imagecodecs

    return imagecodecs.png_encode(np.random.default_rng(1).integers(0, 65535, (9, 7, 4), dtype=np.uint16))


GEO_TAGS = [(33550, 12, 3, (30.0, 30.0, 0.0), False), (33922, 12, 6, (0, 0, 0, 500000.0, 4000000.0, 0), False),
            (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32618), False)]


def geotiff(pixels: np.ndarray, *, nodata: str | None = None, **options) -> bytes:
    extratags = GEO_TAGS + ([(42113, 2, len(nodata) + 1, nodata, False)] if nodata else [])
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, extratags=extratags, **options)
    return buffer.getvalue()


def rgba_geotiff_with_nodata_outside_its_type() -> bytes:
    """uint8 RGBA whose GDAL_NODATA is -10000: it once ended the whole run (OverflowError)."""
    rgba = np.asarray(photo(20, 16, "RGBA")).copy()
    rgba[:4, :, 3] = 0
    return geotiff(rgba, nodata="-10000", photometric="rgb", extrasamples=["unassalpha"])


def palette_geotiff() -> bytes:
    indices = np.random.default_rng(3).integers(0, 4, (16, 20), dtype=np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = [[0, 65535, 0, 30000], [0, 0, 65535, 30000], [65535, 0, 0, 30000]]
    return geotiff(indices, photometric="palette", colormap=colormap)


GOOD = {
    "geo/rgba-nodata-outside-its-type.tif": rgba_geotiff_with_nodata_outside_its_type,
    "geo/palette.tif": palette_geotiff,
    "tiny/one-pixel.png": lambda: save(photo(1, 1), "PNG"),
    "tiny/one-by-n.png": lambda: save(photo(300, 1), "PNG"),
    "palette/transparent.png": palette_with_transparency,
    "cmyk/print.jpg": lambda: save(photo(16, 12, "CMYK"), "JPEG"),
    "gif/animated.gif": animated_gif,
    "exif/rotated.jpg": exif_rotated_jpeg,
    "deep/rgba16.png": rgba16_png,
    "names/with space.png": lambda: save(photo(8, 6), "PNG"),
    "names/ünïcødé 写真.png": lambda: save(photo(6, 8), "PNG"),
    "names/UPPER.PNG": lambda: save(photo(7, 7), "PNG"),
    "icc/srgb.png": lambda: save(photo(8, 8), "PNG", icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()),
}
BUILTIN_ERRORS = {"AttributeError", "TypeError", "KeyError", "IndexError", "OverflowError", "ZeroDivisionError",
                  "NameError", "UnboundLocalError", "AssertionError"}
BAD = {
    "bad/empty.png": lambda: b"",
    "bad/truncated.png": lambda: save(photo(40, 40), "PNG")[:100],
    "bad/truncated.jpg": lambda: save(photo(40, 40), "JPEG")[:300],
    "bad/truncated.tif": lambda: save(photo(40, 40), "TIFF")[:150],
    "bad/random.png": lambda: np.random.default_rng(7).bytes(500),
    "bad/page.jpg": lambda: b"<!doctype html><html><body>404 Not Found</body></html>",
    "bad/bomb.png": lambda: png_header_only(100_000, 100_000),
    "bad/crc.png": bad_crc_png,
    "bad/no-pages.tif": lambda: b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    "bad/corrupt-tile.tif": corrupt_tile_tiff,
    "bad/empty.tif": lambda: b"",
    "bad/truncated.webp": lambda: save(photo(40, 40), "WEBP")[:60],
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    src = root / "src"
    for key, make in {**GOOD, **BAD}.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(make())
    (src / "bad" / "unreadable.png").symlink_to(src / "nowhere.png")  # listed, cannot be read
    (src / "notes.txt").write_text("not an image: never listed")
    listing = root / "list.txt"  # a file deleted between listing and reading
    listing.write_text("\n".join([*GOOD, *BAD, "bad/unreadable.png", "bad/deleted-after-listing.png"]) + "\n")
    return root


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def run(archive, executor: str, capsys) -> tuple[int, dict, dict]:
    dst = archive / f"dst-{executor}"
    code = main(["run", str(archive / "src"), str(dst), "--model", "bicubic", "--scale", "2", "--executor", executor,
                 "--max-pixels", "50000000", "--from-list", str(archive / "list.txt"), "--json", "--no-progress"])
    out = capsys.readouterr().out
    summary = json.loads(out[out.rfind("\n{\n") + 1 if out.rfind("\n{\n") >= 0 else 0:])
    rows = {r["image_id"]: r for r in pq.read_table(dst / "_manifest").to_pylist()}
    return code, summary, rows


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_every_hostile_input_is_either_upscaled_or_a_failed_row_and_nothing_else_is_lost(archive, executor, capsys, request):
    if executor == "ray":
        request.getfixturevalue("ray_instance")
    code, summary, rows = run(archive, executor, capsys)
    expected_bad = set(BAD) | {"bad/unreadable.png", "bad/deleted-after-listing.png"}
    assert code == 3 and summary["ok"] == len(GOOD) and summary["failed"] == len(expected_bad)
    assert set(rows) == set(GOOD) | expected_bad  # one row each, nothing dropped
    for key in GOOD:
        row = rows[key]
        assert row["status"] == "ok", (key, row["error"])
        out = formats.decode_image(open(row["dst_uri"].removeprefix("file://"), "rb").read())
        assert out.pixels.shape[:2] == (row["out_height"], row["out_width"]) == (2 * row["height"], 2 * row["width"])
    for key in expected_bad:
        row = rows[key]
        assert row["status"] == "failed" and row["error_type"] and row["error"], key
        assert len(row["error"]) < 500  # a message, not a traceback
    assert rows["bad/bomb.png"]["error_type"] == "ImageTooLargeError"
    assert rows["bad/deleted-after-listing.png"]["error_type"] == "FileNotFoundError"
    assert rows["exif/rotated.jpg"]["width"] == 10 and rows["exif/rotated.jpg"]["height"] == 20  # rotated first
    assert rows["deep/rgba16.png"]["dtype"] == "uint16" and rows["deep/rgba16.png"]["channels"] == 4
    for key in ("geo/rgba-nodata-outside-its-type.tif", "geo/palette.tif"):  # georeferenced outputs, rescaled
        assert json.loads(rows[key]["transform_out"])[1] == 15.0 and rows[key]["crs"].startswith("EPSG:32618"), key
    assert not any(r["error_type"] in BUILTIN_ERRORS for r in rows.values())  # those would be our bugs
    leftovers = [n for _, _, files in os.walk(archive / f"dst-{executor}") for n in files if n.endswith(".tmp")]
    assert leftovers == []


def test_an_image_over_the_time_limit_fails_alone_and_the_others_finish(tmp_path, capsys):
    """The limit is checked before and after every forward pass: a 1-tile image finishes, a 2,500-tile one is stopped."""
    import torch

    from pipeline.models import LoadedModel, save_model
    from pipeline.models.edsr.arch import EDSR

    torch.manual_seed(0)
    weights = str(tmp_path / "tiny.safetensors")
    save_model(LoadedModel(name="tiny", arch="EDSR", module=EDSR(num_feat=8, num_block=1, scale=2), scale=2,
                           in_channels=3, out_channels=3, config={"num_feat": 8, "num_block": 1, "scale": 2}), weights)
    (tmp_path / "src").mkdir()
    photo(24, 24).save(tmp_path / "src" / "small.png")
    photo(1600, 1600).save(tmp_path / "src" / "large.png")
    code = main(["run", str(tmp_path / "src"), str(tmp_path / "dst"), "--model", weights, "--executor", "local",
                 "--tile", "40", "--overlap", "8", "--time-limit", "1.5", "--batch-size", "1", "--json"])
    capsys.readouterr()
    rows = {r["image_id"]: r for r in pq.read_table(tmp_path / "dst" / "_manifest").to_pylist()}
    assert code == 3 and rows["small.png"]["status"] == "ok"
    assert rows["large.png"]["error_type"] == "ImageTimeLimitError" and "--time-limit" in rows["large.png"]["error"]
    assert not (tmp_path / "dst" / "large.png").exists()
