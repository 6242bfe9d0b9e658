"""PNG through libpng (imagecodecs): 16-bit reads, and every write.

Reads: Pillow reads 16-bit RGB/RGBA/LA PNGs as 8 bit, so for those the header and
metadata (ICC, EXIF, dpi) come from Pillow and libpng decodes the pixels, keeping all 16
bits and turning a tRNS key into an alpha channel (8-bit PNGs are Pillow's, pillow.py).
Writes: libpng with one filter, Paeth, and zlib's run-length strategy. Pillow tries all
five filters on every row; on scikit-image's eleven sample images, Paeth alone made files
0.6% larger in all and wrote them 2-3x faster (a 768 x 512 photo 25 -> 14 ms, a 64 px
image 0.27 -> 0.07 ms): on a CPU the encoder ran a seventh as long as the model.
"""

from __future__ import annotations

import struct
import zlib

import imagecodecs
import numpy as np

from pipeline.formats import pillow
from pipeline.formats.base import (
    EXIF_PREFIX, DecodedImage, as_dpi, as_hwc, colour_space, exif_note, finish, icc_for, mode_name, read_exif,
)


def decode(data: bytes, label: str, max_pixels: int | None) -> DecodedImage:
    im, frames, info = pillow.open_image(data, "png", label, max_pixels)
    pixels = as_hwc(imagecodecs.png_decode(data))
    if pixels.shape[:2] != (im.size[1], im.size[0]):
        raise ValueError(f"libpng decoded {pixels.shape[:2]}, the header says {im.size[1]} x {im.size[0]}")
    exif = read_exif(im.info.get("exif"))  # not getexif(): for PNG it would decode the pixels again
    exif_note(exif, info)
    return finish(pixels, "png", mode_name(pixels), icc=im.info.get("icc_profile"), exif=exif.raw,
                  orientation=exif.orientation, dpi=as_dpi(im.info.get("dpi")), frames=frames, info=info)


def encode(pixels: np.ndarray, like, dpi, compress_level: int) -> bytes:
    """An 8- or 16-bit PNG at zlib level `compress_level`; the metadata chunks go in after IHDR."""
    png = imagecodecs.png_encode(pixels[..., 0] if pixels.shape[2] == 1 else pixels, level=compress_level,
                                 strategy=zlib.Z_RLE, filter=imagecodecs.PNG.FILTER.PAETH)
    chunks = b""
    if icc := icc_for(like, colour_space(pixels.shape[2], False)):
        chunks += png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi:
        per_metre = (round(dpi[0] / 0.0254), round(dpi[1] / 0.0254))
        chunks += png_chunk(b"pHYs", struct.pack(">IIB", *per_metre, 1))
    if like.exif:
        chunks += png_chunk(b"eXIf", like.exif.removeprefix(EXIF_PREFIX))
    ihdr_end = 8 + 25  # signature, then IHDR: length, type, 13 bytes, CRC
    return png[:ihdr_end] + chunks + png[ihdr_end:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
