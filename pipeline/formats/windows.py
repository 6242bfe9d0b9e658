"""Reading a TIFF a window at a time: the header alone, then only the segments a window needs.

Used by the streaming strategy of the read stage (stages/stream.py) for TIFFs too large to
decode whole.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import tifffile

from pipeline import formats, raster

CACHE_BYTES = 64 << 20  # decoded input segments kept for neighbouring windows


def read_header(fh, *, threshold: int, name: str) -> formats.DecodedImage | None:
    """The first page's header as a pixel-less DecodedImage when the TIFF has more than
    `threshold` pixels and a layout that can be read window by window; else None (the
    image is then decoded in memory, and the in-memory decoder names any problem)."""
    if fh.read(4) not in formats.TIFF_MAGIC:
        return None
    fh.seek(0)
    try:
        return _header(fh, threshold, name)
    except Exception:
        return None


def _header(fh, threshold, name):
    with tifffile.TiffFile(fh) as tif:
        page = tif.pages[0]
        if page.imagewidth * page.imagelength <= threshold:
            return None
        if page.is_subsampled or page.imagedepth > 1 or page.dtype is None:
            return None
        layout = formats.tiff_layout(page, name)
        if layout is None:
            return None  # palette / CMYK / bilevel: Pillow decodes those in memory
        info_raster, info = layout
        georeferenced = info_raster is not None and info_raster.geo is not None \
            and info_raster.geo.georeferenced
        if not georeferenced and page.tags.valueof(formats.ORIENTATION, 1) != 1:
            return None
        bands = page.samplesperpixel
        shape = (page.imagelength, page.imagewidth, bands)
        dtype = page.dtype.newbyteorder("=")  # native, as decoded
        pixels = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape, strides=(0, 0, 0))
        mode = formats.tiff_mode(pixels, info_raster)
        info = dict(info, frames=len(tif.pages))
        dpi = formats._tiff_dpi(page)
        if dpi:
            info["dpi"] = dpi
        return formats.DecodedImage(pixels=pixels, format="tiff", mode=mode, info=info,
                                    icc_profile=page.tags.valueof(34675) or None, raster=info_raster)


class WindowReader:
    """Reads [y0:y1, x0:x1] of a tiled or stripped TIFF page as H x W x bands, decoding
    only the segments (tiles or strips) it needs, with an LRU cache of decoded segments."""

    def __init__(self, page: tifffile.TiffPage, cache_bytes: int | None = None, fill: float = 0):
        self.page = page
        self.fh = page.parent.filehandle
        self.height, self.width, self.bands = page.imagelength, page.imagewidth, page.samplesperpixel
        self.separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and self.bands > 1
        if page.is_tiled:
            self.seg_h, self.seg_w = page.tilelength, page.tilewidth
        else:
            self.seg_h, self.seg_w = min(page.rowsperstrip, self.height), self.width
        self.across = math.ceil(self.width / self.seg_w)
        self.down = math.ceil(self.height / self.seg_h)
        self.per_plane = self.across * self.down
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_bytes, self.cached = cache_bytes or CACHE_BYTES, 0
        self.decoded = 0  # segments decoded (cache misses)
        self.fill = fill
        self.dtype = page.dtype

    def segment_origin(self, index: int) -> tuple[int, int, int]:
        """(plane, y0, x0) of a segment."""
        plane, rest = divmod(index, self.per_plane)
        row, col = divmod(rest, self.across)
        return plane, row * self.seg_h, col * self.seg_w

    def decode(self, index: int) -> np.ndarray:
        """One segment, cropped to the image: h x w x (bands, or 1 when planes are separate)."""
        page = self.page
        count = page.databytecounts[index]
        plane, y0, x0 = self.segment_origin(index)
        h, w = min(self.seg_h, self.height - y0), min(self.seg_w, self.width - x0)
        contig = 1 if self.separate else self.bands
        self.decoded += 1
        if not count:  # sparse file: a missing segment is the fill value
            return np.full((h, w, contig), self.fill, dtype=self.dtype)
        with self.fh.lock:
            self.fh.seek(page.dataoffsets[index])
            data = self.fh.read(count)
        segment, _index, shape = page.decode(data, index, jpegtables=page.jpegtables)
        segment = segment.reshape(shape)[0]
        return segment[:h, :w]

    def _segment(self, index: int) -> np.ndarray:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        segment = self.decode(index)
        self.cache[index] = segment
        self.cached += segment.nbytes
        while self.cached > self.cache_bytes and len(self.cache) > 1:
            _key, old = self.cache.popitem(last=False)
            self.cached -= old.nbytes
        return segment

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0, self.bands), dtype=self.dtype.newbyteorder("="))
        planes = range(self.bands) if self.separate else (0,)
        for row in range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1):
            for col in range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1):
                sy, sx = row * self.seg_h, col * self.seg_w
                ya, yb = max(y0, sy), min(y1, sy + self.seg_h)
                xa, xb = max(x0, sx), min(x1, sx + self.seg_w)
                for plane in planes:
                    segment = self._segment(plane * self.per_plane + row * self.across + col)
                    target = out[ya - y0 : yb - y0, xa - x0 : xb - x0]
                    source = segment[ya - sy : yb - sy, xa - sx : xb - sx]
                    if self.separate:
                        target[..., plane] = source[..., 0]
                    else:
                        target[...] = source
        return out

    def statistics(self, stats: raster.BandStats) -> raster.BandStats:
        """One pass over every segment (uncached) into `stats`."""
        for index in range(len(self.page.dataoffsets)):
            plane = self.segment_origin(index)[0]
            stats.update(self.decode(index), band_offset=plane if self.separate else 0)
        return stats


