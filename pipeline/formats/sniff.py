"""Which format the bytes are, from their magic bytes alone: the one place that knows them.

Only the formats we claim reach a decoder, so a decoder never guesses (and Pillow never
gets to try its other plugins on, say, an HTML error page saved under an image name).
"""

from __future__ import annotations

import zlib

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
# NIfTI: sizeof_hdr (either byte order), then the magic of a single-file image
NIFTI_HEADERS = ((348, 344, b"n+1\x00"), (540, 4, b"n+2\x00"))
JP2_MAGIC = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")  # JP2 box, raw J2K codestream


def sniff(data: bytes) -> str | None:
    """"png" | "jpeg" | "gif" | "webp" | "tiff" | "bmp" | "dicom" | "jp2" | "nifti" | "nifti-gz", or None.
    A gzip file is NIfTI when its decompressed header is (.nii.gz): its content decides, not its name."""
    if data[128:132] == b"DICM":  # DICOM Part 10 (first: its preamble may hold a TIFF header)
        return "dicom"  # (a DICOM data set without the preamble: last, `bare_dicom`)
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(TIFF_MAGIC):
        return "tiff"
    if data.startswith(JP2_MAGIC):
        return "jp2"
    if data.startswith(b"BM"):
        return "bmp"
    if is_nifti(data):
        return "nifti"
    if data.startswith(GZIP_MAGIC) and is_nifti(gunzip_head(data)):
        return "nifti-gz"
    if bare_dicom(data):
        return "dicom"
    return None


def is_nifti(head: bytes) -> bool:
    return any(head[:4] in (size.to_bytes(4, "little"), size.to_bytes(4, "big")) and head[at:at + 4] == magic
               for size, at, magic in NIFTI_HEADERS)


def gunzip_head(data: bytes, size: int = 540) -> bytes:
    """The first `size` decompressed bytes of gzip data (fewer when it is cut or corrupt)."""
    inflate = zlib.decompressobj(wbits=31)
    try:
        return inflate.decompress(data[:1 << 16], size)
    except zlib.error:
        return b""


# The elements a DICOM data set without preamble starts with, and their VRs: the file meta
# group's first, or (no meta) group 0008's first (lengths, character set, image type, SOP class).
_FIRST_ELEMENTS = {(0x0002, 0x0000): b"UL", (0x0002, 0x0001): b"OB", (0x0008, 0x0000): b"UL",
                   (0x0008, 0x0005): b"CS", (0x0008, 0x0008): b"CS", (0x0008, 0x0012): b"DA",
                   (0x0008, 0x0016): b"UI", (0x0008, 0x0018): b"UI"}


def bare_dicom(data: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble (optionally with "DICM" first): its first
    element is one of those above, with its VR (explicit VR, either byte order) or an
    even length that fits the file (implicit VR)."""
    data = data[4:] if data[:4] == b"DICM" else data
    if len(data) < 8:
        return False
    for order in ("little", "big"):
        tag = (int.from_bytes(data[0:2], order), int.from_bytes(data[2:4], order))
        if tag not in _FIRST_ELEMENTS:
            continue
        if data[4:6] == _FIRST_ELEMENTS[tag]:
            return True
        length = int.from_bytes(data[4:8], "little")
        if order == "little" and length % 2 == 0 and 0 < length < len(data):
            return True
    return False


def png_bit_depth(data: bytes) -> int | None:
    """IHDR's bit depth (the first chunk, by the PNG spec), or None if the header is cut."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else None


def not_an_image(data: bytes) -> str:
    """Say what the bytes look like: error pages saved under an image name are common."""
    if data.startswith(GZIP_MAGIC):
        if len(gunzip_head(data)) < 348:
            return "truncated or corrupt gzip file"
        return "gzip data that is not a NIfTI volume (the only gzip-compressed format read)"
    for size, at, _magic in NIFTI_HEADERS:
        if data[:4] in (size.to_bytes(4, "little"), size.to_bytes(4, "big")) and len(data) < at + 4:
            return f"truncated NIfTI header ({len(data)} bytes)"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "not an image (looks like HTML)"
    if head.startswith((b"<?xml", b"<svg")):
        return "not a supported image (looks like XML/SVG)"
    try:
        data[:1024].decode("utf-8")
        return "not an image (looks like text)"
    except UnicodeDecodeError:
        return f"not a supported image (unrecognised header {data[:8].hex(' ')})"
