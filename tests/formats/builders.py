"""Generated test files: TIFFs by tifffile (GeoTIFF tags included), PNG/JPEG by Pillow, and
byte-level edits (a tag patched, a chunk inserted) for what no writer produces on purpose."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import tifffile
from PIL import Image

UTM18 = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32618, 3076, 0, 1, 9001)
PIXEL_SCALE, TIEPOINT, GEO_KEYS, GDAL_NODATA = 33550, 33922, 34735, 42113


def geo_tags(nodata=None, pixel=(30.0, 30.0), origin=(500000.0, 4000000.0)) -> list:
    tags = [(PIXEL_SCALE, 12, 3, (pixel[0], pixel[1], 0.0), True),
            (TIEPOINT, 12, 6, (0.0, 0.0, 0.0, origin[0], origin[1], 0.0), True),
            (GEO_KEYS, 3, len(UTM18), UTM18, True)]
    if nodata is not None:
        tags.append((GDAL_NODATA, 2, 0, str(nodata), True))
    return tags


def tiff(array, *, geo=False, nodata=None, extratags=(), **options) -> bytes:
    tags = list(extratags) + (geo_tags(nodata) if geo else [])
    out = io.BytesIO()
    tifffile.imwrite(out, array, extratags=tags, metadata=None, **options)
    return out.getvalue()


def pillow(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def tags_of(data: bytes) -> dict:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        return {tag.code: tag.value for tag in page.tags}


def tag_offset(data: bytes, code: int) -> tuple[int, int]:
    """(offset of the IFD entry, offset of its value or of the value field)."""
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tag = tif.pages[0].tags[code]
        return tag.offset, tag.valueoffset


def patch_short(data: bytes, code: int, *values: int) -> bytes:
    """Overwrite a SHORT tag's value(s) in place (little-endian files)."""
    _entry, value = tag_offset(data, code)
    out = bytearray(data)
    struct.pack_into("<" + "H" * len(values), out, value, *values)
    return bytes(out)


def patch_long(data: bytes, code: int, value: int) -> bytes:
    """Overwrite a one-value SHORT or LONG tag in place, keeping its type (little-endian files)."""
    entry, offset = tag_offset(data, code)
    out = bytearray(data)
    (kind,) = struct.unpack_from("<H", out, entry + 2)
    struct.pack_into("<H" if kind == 3 else "<I", out, offset, value)
    return bytes(out)


def rename_tag(data: bytes, code: int, new_code: int = 65000) -> bytes:
    """Make a tag unknown (it then reads as absent); the IFD stays sorted when new_code is the largest."""
    entry, _value = tag_offset(data, code)
    out = bytearray(data)
    struct.pack_into("<H", out, entry, new_code)
    return bytes(out)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_insert_after_ihdr(png: bytes, *chunks: bytes) -> bytes:
    return png[:33] + b"".join(chunks) + png[33:]


def png_declaring(width: int, height: int, bit_depth: int = 8, color: int = 2) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(bytes(64)))
            + png_chunk(b"IEND", b""))


def jpeg_with_app1(image: np.ndarray, payload: bytes) -> bytes:
    data = pillow(Image.fromarray(image), "JPEG", quality=95)
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def exif(**tags) -> bytes:
    codes = {"orientation": 0x0112, "artist": 0x013B}
    block = Image.Exif()
    for name, value in tags.items():
        block[codes[name]] = value
    return block.tobytes()


def upscale_nearest(pixels: np.ndarray, scale: int = 2) -> np.ndarray:
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def bilevel_rgb(values: np.ndarray) -> bytes:
    """A 1-bit RGB TIFF packed as the spec says (samples of a pixel together, rows padded to a
    byte); tifffile's writer packs multi-sample bilevel otherwise, though its reader is right."""
    h, w, s = values.shape
    data = bytearray(tiff(values.astype(bool), photometric="rgb"))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    packed = np.packbits(values.astype(bool).reshape(h, w * s), axis=1).tobytes()
    assert len(packed) == count
    data[offset : offset + count] = packed
    return bytes(data)


def smooth(height: int = 40, width: int = 48) -> np.ndarray:
    """RGB without sharp edges, so JPEG's loss stays small."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([40 + xx * 3, 30 + yy * 4, 200 - xx - yy], axis=2).clip(0, 255).astype(np.uint8)
