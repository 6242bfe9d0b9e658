"""Reading a TIFF a window at a time: the header alone, then only the segments a window needs.

Used by the streaming strategy of the read stage (stages/stream.py) for plain TIFFs (photos,
rasters without GeoTIFF or GDAL tags) too large to decode whole; georeferenced ones are
read window by window through rasterio (formats/gdal.py).

A segment is a tile, a strip, or, for a strip larger than BAND_BYTES decoded (tifffile and
Pillow write a whole uncompressed image as one strip), a band of its rows: uncompressed
rows are read from their byte offsets, deflate-compressed ones inflated incrementally
(one zlib stream per strip, kept open going down the image; predictors undone per row).
Other codecs have no way in but the strip's start: such a strip is decoded whole up to
STRIP_LIMIT, and a file with a larger one is refused (StreamingRefusedError) rather than
held whole in memory.
"""

from __future__ import annotations

import bisect
import math
import zlib
from collections import OrderedDict

import imagecodecs
import numpy as np
import tifffile

from pipeline import raster
from pipeline.formats import tiff
from pipeline.formats.base import ORIENTATION, ImageDecodeError, ImageHeader
from pipeline.formats.sniff import TIFF_MAGIC

CACHE_BYTES = 64 << 20  # decoded input segments kept for neighbouring windows
BAND_BYTES = 2 << 20  # rows of a larger strip decoded at a time
STRIP_LIMIT = 256 << 20  # the most a strip that cannot be read by rows may decode to
_READ_BYTES = 1 << 20  # compressed bytes read at a time when inflating
_NONE, _DEFLATE = 1, (8, 32946)


class StreamingRefusedError(ImageDecodeError):
    """The TIFF is too large to decode whole and its layout cannot be read window by window."""


def read_header(fh, *, threshold: int, name: str) -> ImageHeader | None:
    """The first page's header when the TIFF has more than `threshold` pixels and a layout
    that can be read window by window; else None (the image is then decoded in memory, and
    the in-memory decoder names any problem). Raises StreamingRefusedError when the image
    is over the threshold but has a strip too large to hold and impossible to read by rows."""
    if fh.read(4) not in TIFF_MAGIC:
        return None
    fh.seek(0)
    try:
        return _header(fh, threshold, name)
    except StreamingRefusedError:
        raise
    except Exception:
        return None


def _header(fh, threshold, name) -> ImageHeader | None:
    with tifffile.TiffFile(fh) as tif:
        page = tif.pages[0]
        if page.imagewidth * page.imagelength <= threshold:
            return None
        if page.is_subsampled or page.imagedepth > 1 or page.dtype is None:
            return None
        if tiff.gdal_tagged(page):
            return None  # GeoTIFFs stream through rasterio (formats/gdal.py)
        layout = tiff.tiff_layout(page, name)
        if layout is None:
            return None  # palette / CMYK / bilevel / odd bit depths: decoded in memory
        info_raster, info = layout
        if page.tags.valueof(ORIENTATION, 1) != 1:
            return None
        segment_plan(page, name)  # refuses a strip that can neither be held nor read by rows
        shape = (page.imagelength, page.imagewidth, page.samplesperpixel)
        dtype = page.dtype.newbyteorder("=")  # native, as decoded
        mode = tiff.tiff_mode(np.empty((0, 0, shape[2]), dtype), info_raster)
        info = dict(info, frames=len(tif.pages))
        dpi = tiff.tiff_dpi(page)
        if dpi:
            info["dpi"] = dpi
        return ImageHeader(shape=shape, dtype=dtype, format="tiff", mode=mode, info=info,
                           icc_profile=page.tags.valueof(34675) or None, raster=info_raster)


def segment_plan(page: tifffile.TiffPage, name: str = "image") -> int | None:
    """Rows per band when the page's strips are read by rows, None when by whole segments;
    raises StreamingRefusedError for a segment over STRIP_LIMIT that cannot be."""
    bands = page.samplesperpixel
    contig = 1 if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and bands > 1 else bands
    itemsize = page.dtype.itemsize
    if page.is_tiled:
        seg_bytes = page.tilelength * page.tilewidth * contig * itemsize
        what = f"tiles of {page.tilewidth} x {page.tilelength}"
    else:
        rows = min(page.rowsperstrip, page.imagelength)
        row_bytes = page.imagewidth * contig * itemsize
        seg_bytes = rows * row_bytes
        what = f"strips of {rows} rows"
        if seg_bytes > BAND_BYTES and _by_rows(page):
            return max(1, BAND_BYTES // row_bytes)
    if seg_bytes > STRIP_LIMIT:
        codec = page.compression.name if isinstance(page.compression, tifffile.COMPRESSION) else page.compression
        raise StreamingRefusedError(
            f"{name}: cannot stream: its {what} ({seg_bytes / 2**20:.0f} MiB decoded each, {codec}) can only be "
            f"decoded whole; re-save it tiled (e.g. gdal_translate -co TILED=YES) or with smaller strips"
        )
    return None


def _by_rows(page: tifffile.TiffPage) -> bool:
    """Whether rows of a strip can be reached without decoding the strip from its start."""
    return (page.bitspersample in (8, 16, 32, 64) and page.fillorder == 1
            and (int(page.compression) == _NONE or int(page.compression) in _DEFLATE)
            and int(page.predictor) in (1, 2, 3))


class _Inflater:
    """One deflate-compressed strip, inflated front to back, a few rows at a time."""

    def __init__(self, fh, offset: int, count: int):
        self.fh, self.offset, self.count = fh, offset, count
        self.read_pos = 0  # compressed bytes taken from the file
        self.out_pos = 0  # decompressed bytes handed out
        self.stream = zlib.decompressobj()

    def take(self, size: int) -> bytes:
        """The next `size` decompressed bytes (fewer only where the strip's data ends)."""
        parts, need = [], size
        while need and not self.stream.eof:
            data = self.stream.unconsumed_tail
            if not data and self.read_pos < self.count:
                with self.fh.lock:
                    self.fh.seek(self.offset + self.read_pos)
                    data = self.fh.read(min(_READ_BYTES, self.count - self.read_pos))
                self.read_pos += len(data)
            piece = self.stream.decompress(data, need)
            if not piece and not data:
                break  # no input left
            parts.append(piece)
            need -= len(piece)
        self.out_pos += size - need
        return b"".join(parts)

    def skip(self, size: int) -> None:
        while size > 0:
            got = len(self.take(min(size, BAND_BYTES)))
            if not got:
                return
            size -= got


class WindowReader:
    """Reads [y0:y1, x0:x1] of a tiled or stripped TIFF page as H x W x bands, decoding
    only the segments (tiles, strips, or bands of a large strip's rows) it needs, with an
    LRU cache of decoded segments.

    Bands of rows are dropped once a read starts below them (windows go down the image),
    and never evicted while the current read needs them, so a single-strip image holds
    about one window's rows (full width), whatever its height."""

    def __init__(self, page: tifffile.TiffPage, cache_bytes: int | None = None, fill: float = 0):
        self.page = page
        self.fh = page.parent.filehandle
        self.height, self.width, self.bands = page.imagelength, page.imagewidth, page.samplesperpixel
        self.separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and self.bands > 1
        self.contig = 1 if self.separate else self.bands
        self.dtype = page.dtype
        self.band_rows = None if page.is_tiled else segment_plan(page)
        if page.is_tiled:
            self.seg_h, self.seg_w = page.tilelength, page.tilewidth
        else:
            self.seg_h, self.seg_w = min(page.rowsperstrip, self.height), self.width
        self.rps = self.seg_h  # rows per strip (stripped pages)
        self.strips_down = math.ceil(self.height / self.seg_h)
        if self.band_rows is None:
            self.row_starts = list(range(0, self.height, self.seg_h))
        else:  # bands of band_rows within each strip
            self.row_starts = [y for s0 in range(0, self.height, self.rps)
                               for y in range(s0, min(s0 + self.rps, self.height), self.band_rows)]
        self.across = math.ceil(self.width / self.seg_w)
        self.down = len(self.row_starts)
        self.per_plane = self.across * self.down
        self.segments = self.per_plane * (self.bands if self.separate else 1)
        self.row_bytes = self.width * self.contig * self.dtype.itemsize
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_bytes, self.cached = cache_bytes or CACHE_BYTES, 0
        self.peak_cached = 0  # most bytes the cache held at once
        self.decoded = 0  # segments decoded (cache misses)
        self.rows_decoded = 0  # rows decoded, summed over segments (a column of tiles counts once per tile)
        self.restarts = 0  # strips inflated again from their start (reads going back up)
        self._inflaters: dict[int, _Inflater] = {}
        self._needed = (0, 0)  # rows of the latest read: never evicted
        usable = raster.usable_nodata(fill, self.dtype.newbyteorder("="))
        self.fill = 0 if usable is None or (math.isnan(usable) and self.dtype.kind in "iu") else usable

    def segment_origin(self, index: int) -> tuple[int, int, int]:
        """(plane, y0, x0) of a segment."""
        plane, rest = divmod(index, self.per_plane)
        row, col = divmod(rest, self.across)
        return plane, self.row_starts[row], col * self.seg_w

    def _row_end(self, row: int) -> int:
        if self.band_rows is None:
            return min(self.height, self.row_starts[row] + self.seg_h)
        y0 = self.row_starts[row]
        return min(self.height, y0 + self.band_rows, (y0 // self.rps + 1) * self.rps)

    def decode(self, index: int) -> np.ndarray:
        """One segment, cropped to the image: h x w x (bands, or 1 when planes are separate)."""
        plane, rest = divmod(index, self.per_plane)
        row, col = divmod(rest, self.across)
        y0, x0 = self.row_starts[row], col * self.seg_w
        h, w = self._row_end(row) - y0, min(self.seg_w, self.width - x0)
        self.decoded += 1
        self.rows_decoded += h
        if self.band_rows is not None:
            return self._band(plane, y0, h)
        page = self.page
        count = page.databytecounts[index]
        if not count:  # sparse file: a missing segment is the fill value
            return np.full((h, w, self.contig), self.fill, dtype=self.dtype.newbyteorder("="))
        with self.fh.lock:
            self.fh.seek(page.dataoffsets[index])
            data = self.fh.read(count)
        segment, _index, shape = page.decode(data, index, jpegtables=page.jpegtables)
        segment = segment.reshape(shape)[0]
        return segment[:h, :w]

    def _band(self, plane: int, y0: int, rows: int) -> np.ndarray:
        """Rows [y0, y0 + rows) of one strip, decoded from just the bytes they need."""
        page = self.page
        strip = plane * self.strips_down + y0 // self.rps
        first = y0 - (y0 // self.rps) * self.rps  # row within the strip
        size = rows * self.row_bytes
        count = page.databytecounts[strip]
        if not count:
            return np.full((rows, self.width, self.contig), self.fill, dtype=self.dtype.newbyteorder("="))
        if int(page.compression) == _NONE:
            start = first * self.row_bytes
            with self.fh.lock:
                self.fh.seek(page.dataoffsets[strip] + start)
                data = self.fh.read(min(size, max(0, count - start)))
        else:
            inflater = self._inflaters.get(strip)
            if inflater is None or inflater.out_pos > first * self.row_bytes:
                if inflater is not None:
                    self.restarts += 1
                inflater = self._inflaters[strip] = _Inflater(self.fh, page.dataoffsets[strip], count)
            inflater.skip(first * self.row_bytes - inflater.out_pos)
            data = inflater.take(size)
        if len(data) != size:
            raise ImageDecodeError(f"strip {strip} holds {len(data)} bytes for rows {first}..{first + rows - 1}, "
                                   f"{size} expected: the file is truncated or corrupt")
        return self._unpredict(data, rows)

    def _unpredict(self, data: bytes, rows: int) -> np.ndarray:
        predictor = int(self.page.predictor)
        shape = (1, rows, self.width, self.contig)
        if predictor in (3, 34894, 34895):  # floating point: bytes shuffled per row, in file byte order
            raw = np.frombuffer(data, np.dtype(self.dtype.char)).reshape(shape).copy()
            out = imagecodecs.floatpred_decode(raw, axis=-2, out=raw)
            return np.asarray(out)[0].astype(self.dtype.newbyteorder("="), copy=False)
        stored = np.dtype(self.dtype.char).newbyteorder(self.page.parent.byteorder)  # the file's byte order
        values = np.frombuffer(data, stored).reshape(shape[1:]).astype(self.dtype.newbyteorder("="))
        if predictor == 2:  # horizontal differencing, per sample, wrapping like the integers do
            np.cumsum(values, axis=1, dtype=values.dtype, out=values)
        return values

    def _segment(self, index: int) -> np.ndarray:
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        segment = self.decode(index)
        self.cache[index] = segment
        self.cached += segment.nbytes
        self.peak_cached = max(self.peak_cached, self.cached)
        self._evict()
        return segment

    def _needed_now(self, index: int) -> bool:
        row = (index % self.per_plane) // self.across
        return self.row_starts[row] < self._needed[1] and self._row_end(row) > self._needed[0]

    def _evict(self) -> None:
        for key in list(self.cache):
            if self.cached <= self.cache_bytes or len(self.cache) <= 1:
                return
            if self.band_rows is not None and self._needed_now(key):
                continue  # rows this read needs: evicting them would mean inflating the strip again
            self.cached -= self.cache.pop(key).nbytes

    def _drop_above(self, y0: int) -> None:
        """Bands (and the inflaters of strips) that end above the read: windows go down the
        image, so they are done."""
        for key in [k for k in self.cache if self._row_end((k % self.per_plane) // self.across) <= y0]:
            self.cached -= self.cache.pop(key).nbytes
        for strip in [s for s in self._inflaters if (s % self.strips_down + 1) * self.rps <= y0]:
            del self._inflaters[strip]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0, self.bands), dtype=self.dtype.newbyteorder("="))
        planes = range(self.bands) if self.separate else (0,)
        if self.band_rows is not None:
            self._drop_above(y0)
        self._needed = (y0, y1)
        first = bisect.bisect_right(self.row_starts, y0) - 1
        last = bisect.bisect_right(self.row_starts, y1 - 1) - 1
        for row in range(first, last + 1):
            sy, ey = self.row_starts[row], self._row_end(row)
            for col in range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1):
                sx = col * self.seg_w
                ya, yb = max(y0, sy), min(y1, ey)
                xa, xb = max(x0, sx), min(x1, sx + self.seg_w)
                for plane in planes:
                    segment = self._segment(plane * self.per_plane + row * self.across + col)
                    target = out[ya - y0 : yb - y0, xa - x0 : xb - x0]
                    source = segment[ya - sy : yb - sy, xa - sx : xb - sx]
                    if self.separate:
                        target[..., plane] = source[..., 0]
                    else:
                        target[...] = source
        return out  # its rows stay protected until the next read: the next window along needs them

    def statistics(self, stats: raster.BandStats) -> raster.BandStats:
        """One pass over every segment (uncached) into `stats`."""
        for index in range(self.segments):
            plane = self.segment_origin(index)[0]
            stats.update(self.decode(index), band_offset=plane if self.separate else 0)
        return stats
