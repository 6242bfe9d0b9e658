"""Single-strip TIFFs (tifffile's and Pillow's default) read window by window within a window's
rows: uncompressed rows from their offsets, deflate inflated incrementally. The 20000 x 20000
figures are in benchmarks/single_strip.py."""

import numpy as np
import pytest
import tifffile

from pipeline import raster
from pipeline.formats import ImageDecodeError, windows
from pipeline.stages.stream import window_grid

HEIGHT, WIDTH = 2000, 3000
MARGIN = 16


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.uint32)
    rng = np.random.default_rng(0)
    planes = [(xx * (3 + k) + yy * (5 - k) + (xx * yy >> 8)) & 0xFF for k in range(3)]
    pixels = np.stack(planes, axis=2).astype(np.uint8)
    pixels[rng.random((HEIGHT, WIDTH)) < 0.01] = 7  # some noise, so deflate has work to do
    return pixels


VARIANTS = {
    "uncompressed": {},
    "deflate": {"compression": "zlib"},
    "deflate+predictor": {"compression": "zlib", "predictor": True},
    "deflate planar-separate": {"compression": "zlib", "planarconfig": "separate"},
    "deflate, strips of 700 rows": {"compression": "zlib", "rowsperstrip": 700},
}
STRIPS = {"deflate planar-separate": 3, "deflate, strips of 700 rows": 3}


def write(path, pixels, **options):
    data = np.moveaxis(pixels, -1, 0) if options.get("planarconfig") == "separate" else pixels
    options.setdefault("rowsperstrip", pixels.shape[0])
    tifffile.imwrite(path, data, photometric="rgb", metadata=None, **options)


def stream_order(reader, height, width, scale=2):
    """The windows stages/stream.py reads, in its order."""
    tile_in, window_w = window_grid(height, width, scale)
    for cy0 in range(0, height, tile_in):
        for cx0 in range(0, width, window_w):
            y0, y1 = max(0, cy0 - MARGIN), min(height, cy0 + tile_in + MARGIN)
            x0, x1 = max(0, cx0 - MARGIN), min(width, cx0 + window_w + MARGIN)
            yield (y0, y1, x0, x1), reader.read(y0, y1, x0, x1)


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of 256 KiB (29 rows here), so the bound below is about the window itself."""
    monkeypatch.setattr(windows, "BAND_BYTES", 256 << 10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_strip_read_in_windows_equals_the_full_decode_within_a_windows_rows(tmp_path, image, variant,
                                                                                   small_bands):
    path = tmp_path / "scan.tif"
    write(path, image, **VARIANTS[variant])
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert len(page.dataoffsets) == STRIPS.get(variant, 1)
        full = page.asarray()
        full = np.moveaxis(full, 0, -1) if "separate" in variant else full
        reader = windows.WindowReader(page)
        assert reader.band_rows is not None
        windows_read = 0
        for (y0, y1, x0, x1), window in stream_order(reader, HEIGHT, WIDTH):
            np.testing.assert_array_equal(window, full[y0:y1, x0:x1])
            windows_read += 1
    tile_in, _ = window_grid(HEIGHT, WIDTH, 2)
    window_rows = tile_in + 2 * MARGIN
    row_bytes = WIDTH * image.shape[2] * image.itemsize  # every plane together
    assert windows_read == 4 * 6
    assert reader.rows_decoded == HEIGHT * (3 if "separate" in variant else 1)  # every row once
    assert reader.restarts == 0
    # never more than a window's rows, plus the part of a band sticking out at each end
    assert reader.peak_cached <= (window_rows + 2 * reader.band_rows) * row_bytes
    assert reader.peak_cached < image.nbytes / 3


def test_statistics_then_windows_inflates_each_strip_twice_and_no_more(tmp_path, image):
    path = tmp_path / "scan.tif"
    write(path, image, compression="zlib", predictor=True)
    with tifffile.TiffFile(path) as tif:
        reader = windows.WindowReader(tif.pages[0])
        stats = reader.statistics(raster.BandStats(3))
        np.testing.assert_array_equal(stats.lo, image.min(axis=(0, 1)))
        np.testing.assert_array_equal(stats.hi, image.max(axis=(0, 1)))
        for _window, _pixels in stream_order(reader, HEIGHT, WIDTH):
            pass
        assert reader.restarts == 1 and reader.rows_decoded == 2 * HEIGHT


def test_reads_going_back_up_are_still_right(tmp_path, image, small_bands):
    path = tmp_path / "scan.tif"
    write(path, image[:600, :700], compression="zlib")
    rng = np.random.default_rng(4)
    with tifffile.TiffFile(path) as tif:
        reader = windows.WindowReader(tif.pages[0], cache_bytes=1 << 20)
        for _ in range(25):
            y0, x0 = rng.integers(0, 599), rng.integers(0, 699)
            y1, x1 = rng.integers(y0 + 1, 601), rng.integers(x0 + 1, 701)
            np.testing.assert_array_equal(reader.read(y0, y1, x0, x1), image[y0:y1, x0:x1])
        assert reader.restarts > 0  # it went back up: the strip was inflated again, correctly


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("dtype, predictor", [(np.uint16, 2), (np.int16, 2), (np.float32, 3), (np.float32, 1)])
def test_rows_of_any_sample_type_byte_order_and_predictor(tmp_path, byteorder, dtype, predictor):
    rng = np.random.default_rng(1)
    values = np.cumsum(rng.standard_normal((900, 1200, 2)) * 50, axis=1).astype(dtype)
    path = tmp_path / "raster.tif"
    tifffile.imwrite(path, values, byteorder=byteorder, compression="zlib", predictor=predictor,
                     rowsperstrip=900, photometric="minisblack", planarconfig="contig")
    with tifffile.TiffFile(path) as tif:
        reader = windows.WindowReader(tif.pages[0])
        assert reader.band_rows is not None
        np.testing.assert_array_equal(reader.read(0, 900, 0, 1200), values)
        np.testing.assert_array_equal(reader.read(450, 901 - 1, 13, 1001), values[450:900, 13:1001])


def test_a_codec_without_row_access_is_decoded_whole_up_to_the_limit(tmp_path, image):
    path = tmp_path / "lzw.tif"
    write(path, image[:400], compression="lzw")
    with tifffile.TiffFile(path) as tif:
        reader = windows.WindowReader(tif.pages[0])
        assert reader.band_rows is None  # one segment, the whole strip
        np.testing.assert_array_equal(reader.read(10, 300, 5, 2000), image[10:300, 5:2000])


def test_a_larger_strip_without_row_access_refuses_streaming_with_the_way_out(tmp_path, image, monkeypatch):
    monkeypatch.setattr(windows, "STRIP_LIMIT", 1 << 20)
    path = tmp_path / "lzw.tif"
    write(path, image, compression="lzw")
    with open(path, "rb") as fh, pytest.raises(windows.StreamingRefusedError) as caught:
        windows.read_header(fh, threshold=1, name="archive/lzw.tif")
    message = str(caught.value)
    assert message.startswith("archive/lzw.tif: cannot stream: its strips of 2000 rows")
    assert "LZW" in message and "TILED=YES" in message and "\n" not in message
    assert isinstance(caught.value, ImageDecodeError)


def test_a_truncated_single_strip_fails_in_the_window_that_reaches_past_the_end(tmp_path, image):
    path = tmp_path / "cut.tif"
    write(path, image)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    data = path.read_bytes()
    path.write_bytes(data[: offset + WIDTH * 3 * 1000])  # half the rows
    with tifffile.TiffFile(path) as tif:
        reader = windows.WindowReader(tif.pages[0])
        np.testing.assert_array_equal(reader.read(0, 500, 0, 600), image[:500, :600])
        with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
            reader.read(900, 1200, 0, 600)
