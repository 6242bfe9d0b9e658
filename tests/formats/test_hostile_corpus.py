"""A hostile corpus: generated damaged and odd files, plus every image shipped in skimage's data
folder and pydicom's bundled test files. decode_image either returns pixels of the declared
size and a supported dtype or raises ImageDecodeError (one line, naming the file, never our own
AttributeError & co. underneath); what decodes is encoded in its default output format and
either decodes back to the same shape and dtype or raises ImageEncodeError.

Run with -s to see the counts (decoded / refused per reason)."""

from __future__ import annotations

import collections
import io
import os
import struct
import traceback
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.formats import ImageDecodeError, ImageEncodeError, ImageTooLargeError, decode_image, encode_image
from pipeline.formats.sniff import sniff

from . import builders as b

OUR_BUGS = (AttributeError, TypeError, KeyError, IndexError, OverflowError, ZeroDivisionError, NameError,
            UnboundLocalError, AssertionError)
PIPELINE = str(Path(__file__).resolve().parents[2] / "pipeline")
MAX_PIXELS = 50_000_000


def photo(h=24, w=32, channels=3, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    values = rng.integers(0, top, (h, w, channels), endpoint=True)
    return values.astype(dtype)[..., 0] if channels == 1 else values.astype(dtype)


def png(array, **options) -> bytes:
    return b.pillow(Image.fromarray(array), "PNG", **options)


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    out = bytearray(data)
    out[offset % len(out)] ^= mask
    return bytes(out)


def tiff_entry_patch(data: bytes, code: int, field: str, value: int) -> bytes:
    """Overwrite the type or count field of a tag's IFD entry (classic little-endian TIFF)."""
    entry, _ = b.tag_offset(data, code)
    out = bytearray(data)
    struct.pack_into("<H" if field == "type" else "<I", out, entry + (2 if field == "type" else 4), value)
    return bytes(out)


def rational_patch(data: bytes, code: int, numerator: int, denominator: int) -> bytes:
    _entry, value = b.tag_offset(data, code)
    out = bytearray(data)
    struct.pack_into("<II", out, value, numerator, denominator)
    return bytes(out)


def apng() -> bytes:
    frames = [Image.fromarray(photo(seed=s)) for s in range(3)]
    return b.pillow(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=40)


def animated_gif() -> bytes:
    frames = [Image.fromarray(photo(seed=s)).convert("P") for s in range(3)]
    return b.pillow(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def gray16_trns_png() -> bytes:
    data = imagecodecs.png_encode(photo(12, 10, 1, np.uint16))
    return b.png_insert_after_ihdr(data, b.png_chunk(b"tRNS", struct.pack(">H", 1234)))


def jpeg_sof_patch(data: bytes, height: int, width: int) -> bytes:
    pos = data.index(b"\xff\xc0")  # baseline SOF0: length, precision, height, width
    out = bytearray(data)
    struct.pack_into(">HH", out, pos + 5, height, width)
    return bytes(out)


def png_ihdr_patch(data: bytes, *, width=None, height=None, depth=None, color=None) -> bytes:
    """A PNG with edited IHDR fields and a valid CRC (so only the decoder can object)."""
    w, h, d, c, comp, filt, inter = struct.unpack(">IIBBBBB", data[16:29])
    def pick(new, old):
        return old if new is None else new

    body = struct.pack(">IIBBBBB", pick(width, w), pick(height, h), pick(depth, d), pick(color, c), comp, filt, inter)
    return data[:8] + b.png_chunk(b"IHDR", body) + data[33:]


def png_bad_idat_good_crc() -> bytes:
    data = png(photo())
    pos = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[pos : pos + 4])
    garbage = np.random.default_rng(3).bytes(length)
    return data[:pos] + b.png_chunk(b"IDAT", garbage) + data[pos + 12 + length :]


def tiff_ifd_loop() -> bytes:
    data = bytearray(b.tiff(photo(8, 8, 1)))
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    struct.pack_into("<I", data, ifd + 2 + 12 * count, ifd)  # next IFD: itself
    return bytes(data)


def gif_screen(width: int, height: int) -> bytes:
    data = bytearray(b.pillow(Image.fromarray(photo(8, 8)).convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    pos = data.index(b"\x2c")  # image descriptor
    struct.pack_into("<HH", data, pos + 5, width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(b.pillow(Image.fromarray(photo(4, 4)), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def cut(data: bytes, at) -> bytes:
    return data[: int(at * len(data)) if isinstance(at, float) else at]


PNG8, JPEG8 = png(photo(40, 40)), b.pillow(Image.fromarray(photo(40, 40)), "JPEG", quality=90)
TIFF8 = b.tiff(photo(40, 40), photometric="rgb")
TIFF_Z = b.tiff(photo(64, 64), photometric="rgb", compression="zlib", tile=(32, 32))
WEBP = b.pillow(Image.fromarray(photo(40, 40)), "WEBP", lossless=True)

GENERATED = {
    # sizes
    "empty.png": lambda: b"",
    "1x1.png": lambda: png(photo(1, 1)),
    "1x1.tif": lambda: b.tiff(photo(1, 1, 1)),
    "1x1.jpg": lambda: b.pillow(Image.fromarray(photo(1, 1)), "JPEG"),
    "1x65537-strips.tif": lambda: b.tiff(photo(65537, 1, 1), rowsperstrip=1),
    "65537x1.png": lambda: png(photo(1, 65537)),
    # frames and modes
    "apng.png": apng,
    "animated.gif": animated_gif,
    "multipage.tif": lambda: b.tiff(np.stack([photo(10, 12, 1, seed=s) for s in range(3)]),
                                    photometric="minisblack"),
    "cmyk.jpg": lambda: b.pillow(Image.fromarray(photo()).convert("CMYK"), "JPEG"),
    "la.png": lambda: b.pillow(Image.fromarray(photo(channels=2)[..., 0]).convert("LA"), "PNG"),
    "gray16-trns.png": gray16_trns_png,
    "rgba16.png": lambda: imagecodecs.png_encode(photo(9, 7, 4, np.uint16)),
    "palette-trns.png": lambda: b.pillow(Image.fromarray(photo()).convert("P"), "PNG", transparency=0),
    "bilevel.bmp": lambda: b.pillow(Image.fromarray(photo()).convert("1"), "BMP"),
    "rgba.bmp": lambda: b.pillow(Image.fromarray(photo(channels=4)), "BMP"),
    "rgba.webp": lambda: b.pillow(Image.fromarray(photo(channels=4)), "WEBP", lossless=True),
    # truncated at several offsets
    **{f"truncated-{at}.png": (lambda at=at: cut(PNG8, at)) for at in (8, 33, 0.5, -12)},
    **{f"truncated-{at}.jpg": (lambda at=at: cut(JPEG8, at)) for at in (3, 20, 0.5)},
    **{f"truncated-{at}.tif": (lambda at=at: cut(TIFF8, at)) for at in (4, 8, 16, 0.5, -1)},
    **{f"truncated-{at}-tiled.tif": (lambda at=at: cut(TIFF_Z, at)) for at in (0.3, 0.9)},
    "truncated-0.5.webp": lambda: cut(WEBP, 0.5),
    "truncated-0.5.gif": lambda: cut(animated_gif(), 0.5),
    "truncated-apng.png": lambda: cut(apng(), 0.7),
    # bit flips in headers
    **{f"flip-{offset}.png": (lambda offset=offset: flip(PNG8, offset)) for offset in (1, 12, 17, 25, 29)},
    **{f"flip-{offset}.jpg": (lambda offset=offset: flip(JPEG8, offset)) for offset in (2, 5, 30, 160)},
    **{f"flip-{offset}.tif": (lambda offset=offset: flip(TIFF8, offset)) for offset in (2, 4, 9, 20, 31)},
    "bad-idat-good-crc.png": png_bad_idat_good_crc,
    "color-type-5.png": lambda: png_ihdr_patch(PNG8, color=5),
    "depth-3.png": lambda: png_ihdr_patch(PNG8, depth=3),
    "zero-width.png": lambda: png_ihdr_patch(PNG8, width=0),
    "sof-zero-height.jpg": lambda: jpeg_sof_patch(JPEG8, 0, 40),
    # huge declared sizes
    "huge.png": lambda: b.png_declaring(100_000, 100_000),
    "huge16.png": lambda: b.png_declaring(70_000, 70_000, 16),
    "huge.jpg": lambda: jpeg_sof_patch(JPEG8, 65500, 65500),
    "huge.gif": lambda: gif_screen(65535, 65535),
    "huge.bmp": lambda: bmp_declaring(100_000, 100_000),
    "huge.tif": lambda: b.patch_long(b.patch_long(TIFF8, 256, 100_000), 257, 100_000),
    "within-limit-no-data.tif": lambda: b.patch_long(b.patch_long(b.tiff(photo(8, 8, 1)), 256, 5000), 257, 5000),
    # odd TIFF tag combinations
    "compression-65000.tif": lambda: b.patch_short(TIFF8, 259, 65000),
    "photometric-99.tif": lambda: b.patch_short(TIFF8, 262, 99),
    "samples-0.tif": lambda: b.patch_short(TIFF8, 277, 0),
    "bits-0.tif": lambda: b.patch_short(b.tiff(photo(8, 8, 1)), 258, 0),
    "bits-24.tif": lambda: b.patch_short(b.tiff(photo(8, 8, 1)), 258, 24),
    "bits-8-8-16.tif": lambda: b.patch_short(TIFF8, 258, 8, 8, 16),
    "strip-offset-past-end.tif": lambda: b.patch_long(TIFF8, 273, 10**9),
    "strip-bytes-0.tif": lambda: b.patch_long(TIFF8, 279, 0),
    "rowsperstrip-0.tif": lambda: b.patch_long(TIFF8, 278, 0),
    "width-type-ascii.tif": lambda: tiff_entry_patch(TIFF8, 256, "type", 2),
    "bits-count-huge.tif": lambda: tiff_entry_patch(TIFF8, 258, "count", 10**8),
    "ifd-loop.tif": tiff_ifd_loop,
    "no-photometric-float.tif": lambda: b.rename_tag(b.tiff(np.ones((6, 7), np.float32)), 262),
    "no-photometric-rgb.tif": lambda: b.rename_tag(TIFF8, 262),
    "float16.tif": lambda: b.tiff(np.ones((6, 7), np.float16)),
    "int32.tif": lambda: b.tiff(np.ones((6, 7), np.int32)),
    "complex64.tif": lambda: b.tiff(np.ones((6, 7), np.complex64)),
    "miniswhite16.tif": lambda: b.tiff(photo(8, 8, 1, np.uint16), photometric="miniswhite"),
    "palette4.tif": lambda: b.tiff(photo(8, 8, 1) % 16, photometric="palette",
                                   colormap=np.arange(768, dtype=np.uint16).reshape(3, 256) * 80),
    "palette-no-colormap.tif": lambda: b.rename_tag(b.tiff(photo(8, 8, 1), photometric="palette",
                                                           colormap=np.zeros((3, 256), np.uint16)), 320),
    "2-samples-no-extrasamples.tif": lambda: b.tiff(photo(8, 8, 2), photometric="minisblack", planarconfig="contig"),
    "13-bands-int16.tif": lambda: b.tiff(photo(8, 8, 13, np.uint16).astype(np.int16), photometric="minisblack",
                                         planarconfig="contig"),
    "planar-predictor16.tif": lambda: b.tiff(np.moveaxis(photo(16, 16, 3, np.uint16), -1, 0), photometric="rgb",
                                             planarconfig="separate", compression="zlib", predictor=True),
    "tile-larger-than-image.tif": lambda: b.tiff(photo(5, 7), photometric="rgb", tile=(32, 32)),
    "ycbcr-jpeg.tif": lambda: b.tiff(photo(32, 32), photometric="rgb", compression="jpeg"),
    "4-bit.tif": lambda: b.tiff(photo(8, 8, 1) % 16, photometric="minisblack", bitspersample=4),
    "12-bit.tif": lambda: b.tiff(photo(8, 8, 1, np.uint16) % 4096, photometric="minisblack", bitspersample=12),
    "bilevel-rgb.tif": lambda: b.bilevel_rgb(photo(6, 8) > 127),
    "cmyk.tif": lambda: b.tiff(photo(8, 8, 4), photometric="separated"),
    "bigtiff.tif": lambda: b.tiff(photo(8, 8), photometric="rgb", bigtiff=True),
    "geo-rgba-nodata.tif": lambda: b.tiff(photo(8, 8, 4), geo=True, nodata=-10000, photometric="rgb",
                                          extrasamples=["unassalpha"]),
    "geo-cmyk-nodata.tif": lambda: b.tiff(photo(8, 8, 4), geo=True, nodata=0, photometric="separated"),
    "orientation-99.tif": lambda: b.tiff(photo(8, 8, 1), extratags=[(274, "H", 1, 99, True)]),
    "dpi-zero-denominator.tif": lambda: rational_patch(b.tiff(photo(8, 8, 1), resolution=(300, 300),
                                                              resolutionunit=2), 282, 300, 0),
    # not images
    "page.html.jpg": lambda: b"<!DOCTYPE html><html><body>404</body></html>",
    "notes.txt.png": lambda: b"just notes\n",
    "random.bin": lambda: np.random.default_rng(7).bytes(4096),
    "dicm-preamble-only.dcm": lambda: bytes(128) + b"DICM",
}


def _real_files() -> dict:
    """skimage's shipped images and pydicom's bundled test files (read from disk, never fetched)."""
    found = {}
    try:
        import skimage

        folder = Path(os.path.dirname(skimage.__file__)) / "data"
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".webp"):
                found[f"skimage/{path.name}"] = path
    except ImportError:
        pass
    try:
        import pydicom

        folder = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
        for path in sorted(folder.glob("*.dcm")):
            found[f"pydicom/{path.name}"] = path
    except ImportError:
        pass
    return found


REAL = _real_files()


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) as the header declares, from another reader; None when none can say."""
    fmt = sniff(data)
    try:
        if fmt == "tiff":
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                return tif.pages[0].imagelength, tif.pages[0].imagewidth
        if fmt == "dicom":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        if fmt is not None:
            width, height = Image.open(io.BytesIO(data)).size
            return height, width
    except Exception:
        return None
    return None


def reason(error: Exception) -> str:
    """The kind of refusal, from the message: what the counts are grouped by."""
    text = str(error).split(": ", 1)[-1].lower()
    if isinstance(error, ImageTooLargeError):
        return "too large"
    for key in ("empty file", "not an image", "not a supported image", "truncated", "crc mismatch",
                "unsupported", "is not supported", "corrupt", "cannot decode dicom", "without pixel data"):
        if key in text:
            return key
    return text[:40]


def our_own_bug(error: BaseException) -> str | None:
    """A built-in error raised by pipeline code somewhere down the cause chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OUR_BUGS) and error.__traceback__ is not None:
            last = traceback.extract_tb(error.__traceback__)[-1]
            if last.filename.startswith(PIPELINE):
                return f"{type(error).__name__} at {last.filename}:{last.lineno}: {error}"
        error = error.__cause__ or error.__context__
    return None


COUNTS: collections.Counter = collections.Counter()
CASES = {**{k: ("generated", v) for k, v in GENERATED.items()}, **{k: ("real", v) for k, v in REAL.items()}}


def _data(case: str) -> bytes:
    kind, source = CASES[case]
    return source() if kind == "generated" else source.read_bytes()


def test_the_corpus_is_big_enough():
    assert len(GENERATED) >= 40
    if REAL:
        assert sum(k.startswith("skimage/") for k in REAL) >= 20 or not any(k.startswith("skimage/") for k in REAL)


@pytest.mark.parametrize("case", list(CASES))
def test_decode_returns_the_declared_image_or_an_image_decode_error_and_encode_round_trips(case):
    data = _data(case)
    try:
        decoded = decode_image(data, name=case, max_pixels=MAX_PIXELS)
    except ImageDecodeError as error:
        message = str(error)
        assert message.startswith(f"{case}: "), message
        assert "\n" not in message and len(message) < 1200, message
        bug = our_own_bug(error)
        assert bug is None, bug
        COUNTS[f"refused: {reason(error)}"] += 1
        return
    pixels = decoded.pixels
    types = ("uint8", "uint16", "int16", "float32") + (("uint32", "int32") if decoded.format == "dicom" else ())
    assert pixels.ndim == 3 and pixels.dtype.name in types, pixels.dtype  # DICOM: 32-bit dose grids too
    assert pixels.shape[2] >= 1 and (decoded.raster is not None or pixels.shape[2] <= 4)
    declared = declared_size(data)
    if declared is not None:
        assert pixels.shape[:2] in (declared, declared[::-1]), (pixels.shape, declared)  # orientation may swap
    COUNTS["decoded"] += 1
    try:
        out = encode_image(pixels, decoded)
    except ImageEncodeError as error:
        assert our_own_bug(error) is None, our_own_bug(error)
        COUNTS[f"decoded, encode refused: {str(error)[:50]}"] += 1
        return
    again = decode_image(out, name=f"{case} (output)")
    assert again.pixels.shape == pixels.shape and again.pixels.dtype == pixels.dtype, (again.pixels.shape,
                                                                                       pixels.shape)


def test_print_the_counts():
    """Last in the file: the tally of the cases above (pytest -s shows it)."""
    total = sum(v for k, v in COUNTS.items() if not k.startswith("decoded, encode"))
    print(f"\nhostile corpus: {len(GENERATED)} generated + {len(REAL)} real files, {total} tallied")
    for key, value in sorted(COUNTS.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {value:4d}  {key}")
