"""Error messages say what was expected, in one line: a bad weights file or an unreachable
model URL (through load_model and the CLI), an image over --max-pixels (one limit, ours) and
a float raster refused for PNG (about precision, not georeferencing it never had)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tifffile

from pipeline import formats
from pipeline.formats.base import ImageEncodeError, ImageTooLargeError
from pipeline.models import ModelLoadError, load_model

NOT_WEIGHTS = ": not a PyTorch or safetensors weights file: "


# --- weights files that are not weights ------------------------------------

BAD_WEIGHTS = {
    "random.pth": (os.urandom(4096), "unrecognised content"),
    "notes.pth": (b"hello, these are not weights\nsecond line\n", "a text file, starting 'hello, these are not weights'"),
    "page.pth": (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>nope</body></html>",
                 "an HTML page ('404 Not Found')"),
    "truncated.safetensors": (struct.pack("<Q", 4000) + b'{"conv1.weight": {"dtype": "F32", "shape": [',
                              "a truncated safetensors file: its header says 4000 bytes but only"),
    "empty.pth": (b"", "the file is empty (0 bytes)"),
    "empty.safetensors": (b"", "the file is empty (0 bytes)"),
    "pointer.pth": (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n", "a Git LFS pointer"),
}


@pytest.mark.parametrize("name", BAD_WEIGHTS)
def test_a_file_that_is_not_weights_says_so_and_what_it_is(tmp_path, name):
    data, reason = BAD_WEIGHTS[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}{NOT_WEIGHTS}{reason}"), message
    assert "\n" not in message


def test_a_truncated_torch_checkpoint_is_named_as_a_damaged_archive(tmp_path):
    import torch

    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(64, 64)}, buffer)
    path = tmp_path / "cut.pth"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ModelLoadError, match=rf"^{path}{NOT_WEIGHTS}a damaged or truncated zip archive"):
        load_model(str(path))


def test_a_pickle_that_would_run_code_is_still_refused_not_described(tmp_path):
    import torch

    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Exploit()}, path)
    with pytest.raises(ModelLoadError, match=r"^refusing to load .*evil\.pth: it is not a plain weights file"):
        load_model(str(path))


@pytest.mark.parametrize("url, cause", [
    ("http://127.0.0.1:1/x.pth", "connection refused"),  # port 1: nothing listens there
    ("file:///nowhere/x.safetensors", "no such file (/nowhere/x.safetensors)"),
])
def test_a_url_that_cannot_be_fetched_says_so_with_the_cause(url, cause):
    with pytest.raises(ModelLoadError) as caught:
        load_model(url)
    assert str(caught.value) == f"{url}: could not be fetched: {cause}"


def test_over_http_a_missing_file_is_the_status_and_an_error_page_is_named_as_one(tmp_path):
    import functools
    import http.server
    import threading

    (tmp_path / "page.pth").write_bytes(BAD_WEIGHTS["page.pth"][0])  # a server that answers 200 with HTML
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ModelLoadError, match=rf"^{base}/missing\.pth: could not be fetched: HTTP 404"):
            load_model(f"{base}/missing.pth")
        with pytest.raises(ModelLoadError, match=rf"^{base}/page\.pth{NOT_WEIGHTS}an HTML page"):
            load_model(f"{base}/page.pth")
    finally:
        server.shutdown()
        server.server_close()


def test_the_cli_reports_a_bad_model_file_in_one_line_with_exit_2(tmp_path):
    src, dst, bad = tmp_path / "src", tmp_path / "dst", tmp_path / "garbage.pth"
    src.mkdir()
    buffer = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    (src / "a.png").write_bytes(buffer.getvalue())
    bad.write_bytes(b"e" * 101)  # what a raw unpickler answers with "101"
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(src), str(dst), "--model", str(bad),
                           "--executor", "local"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{bad}{NOT_WEIGHTS}a text file" in lines[0]


# --- an image over --max-pixels ---------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG with a real IHDR and a stub IDAT: enough for Pillow to read the size, nothing to decode."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(1500, 1000), (20000, 20000)])  # under and over Pillow's 2x refusal
def test_an_image_over_max_pixels_names_only_our_limit(width, height):
    with pytest.raises(ImageTooLargeError) as caught:
        formats.decode_image(png_header(width, height), name="big.png", max_pixels=1_000_000)
    assert str(caught.value) == (f"big.png: {width} x {height} = {width * height:,} pixels is over the limit of "
                                 "1,000,000; raise it with --max-pixels if the image is expected")


def test_without_max_pixels_pillows_limit_is_the_one_named():
    with pytest.raises(ImageTooLargeError) as caught:
        formats.decode_image(png_header(20000, 20000), name="big.png", max_pixels=None)
    message = str(caught.value)
    assert message.startswith("big.png: 400,000,000 pixels is over Pillow's decompression-bomb limit of ")
    assert message.count("limit") == 1 and "(Pillow:" not in message


# --- a float raster refused for PNG -----------------------------------------

def float_tiff(extratags=(), bands: int = 3) -> formats.DecodedImage:
    pixels = np.random.default_rng(0).random((16, 16, bands)).astype(np.float32)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, photometric="rgb" if bands == 3 else "minisblack", planarconfig="contig",
                     extratags=list(extratags), metadata=None)
    return formats.decode_image(buffer.getvalue(), name="float.tif")


GDAL_METADATA = (42112, 2, 0, "<GDALMetadata><Item name='DESCRIPTION' sample='0'>heat</Item></GDALMetadata>", True)
GEOREFERENCED = [(33550, 12, 3, (30.0, 30.0, 0.0), True), (33922, 12, 6, (0.0, 0.0, 0.0, 5e5, 4e6, 0.0), True)]


@pytest.mark.parametrize("tags, bands", [((), 3), ((GDAL_METADATA,), 3), ((), 5)],
                         ids=["photo", "gdal-metadata-only", "five-bands"])
def test_a_float_tiff_without_georeferencing_refused_for_png_talks_about_precision(tags, bands):
    decoded = float_tiff(tags, bands)
    with pytest.raises(ImageEncodeError) as caught:
        formats.encode_image(decoded.pixels, decoded, "png")
    message = str(caught.value)
    assert message.startswith("PNG cannot store float32 pixels without losing precision")
    assert message.endswith("; use --format tiff") and "georeferenc" not in message


def test_a_georeferenced_float_tiff_refused_for_png_names_its_georeferencing_too():
    decoded = float_tiff(GEOREFERENCED)
    with pytest.raises(ImageEncodeError) as caught:
        formats.encode_image(decoded.pixels, decoded, "png")
    assert str(caught.value) == ("PNG cannot store float32 pixels without losing precision, "
                                 "nor keep this raster's georeferencing; use --format tiff")
