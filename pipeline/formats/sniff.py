"""Which format the bytes are, from their magic bytes alone: the one place that knows them.

Only the formats we claim reach a decoder, so a decoder never guesses (and Pillow never
gets to try its other plugins on, say, an HTML error page saved under an image name).
"""

from __future__ import annotations

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JP2_MAGIC = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")  # JP2 box, raw J2K codestream


def sniff(data: bytes) -> str | None:
    """"png" | "jpeg" | "gif" | "webp" | "tiff" | "bmp" | "dicom" | "jp2", or None."""
    if data[128:132] == b"DICM":  # DICOM Part 10 (first: its preamble may hold a TIFF header)
        return "dicom"
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
    return None


def png_bit_depth(data: bytes) -> int | None:
    """IHDR's bit depth (the first chunk, by the PNG spec), or None if the header is cut."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else None


def not_an_image(data: bytes) -> str:
    """Say what the bytes look like: error pages saved under an image name are common."""
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
