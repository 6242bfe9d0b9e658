"""GeoTIFF metadata: read what georeferences a raster and rewrite it for the upscaled one.

Everything is done on the TIFF tags themselves (through tifffile), so nothing needs GDAL:

- ModelPixelScale (33550), ModelTiepoint (33922) or ModelTransformation (34264): the
  pixel-to-map transform. The output covers the same ground with more pixels, so the
  pixel size is divided by the scale (exactly: by out_width / in_width and
  out_height / in_height, as sizes are rounded) and the origin stays where it was.
  Tiepoints are raster coordinates, so they are multiplied by the scale; for rasters
  declared PixelIsPoint (GTRasterTypeGeoKey = 2) a raster coordinate names a pixel
  centre, whose position moves by half an old pixel minus half a new one, and that is
  accounted for.
- GeoKeyDirectory (34735), GeoDoubleParams (34736), GeoAsciiParams (34737): the CRS.
  Copied unchanged.
- GDAL_METADATA (42112): band descriptions, colour interpretation, scale/offset, domains.
  Copied, except the ``STATISTICS_*`` items, which describe the input's pixels and
  would be stale (GDAL trusts them instead of recomputing).
- GDAL_NODATA (42113): copied unchanged.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

PIXEL_SCALE, TIEPOINT, TRANSFORMATION = 33550, 33922, 34264
GEO_KEYS, GEO_DOUBLES, GEO_ASCII = 34735, 34736, 34737
GDAL_METADATA, GDAL_NODATA = 42112, 42113
GEO_TAGS = (PIXEL_SCALE, TIEPOINT, TRANSFORMATION, GEO_KEYS, GEO_DOUBLES, GEO_ASCII, GDAL_METADATA, GDAL_NODATA)
_TIFF_DTYPE = {PIXEL_SCALE: 12, TIEPOINT: 12, TRANSFORMATION: 12, GEO_KEYS: 3, GEO_DOUBLES: 12,
               GEO_ASCII: 2, GDAL_METADATA: 2, GDAL_NODATA: 2}  # DOUBLE, SHORT, ASCII

RASTER_TYPE_KEY, PROJECTED_CS_KEY, GEOGRAPHIC_CS_KEY, CITATION_KEY = 1025, 3072, 2048, 1026
PIXEL_IS_AREA, PIXEL_IS_POINT = 1, 2


@dataclass
class GeoInfo:
    """The georeferencing and GDAL tags of a TIFF page, as read."""

    tags: dict[int, object] = field(default_factory=dict)  # tag code -> value (tuple of numbers or str)

    @property
    def georeferenced(self) -> bool:
        return TRANSFORMATION in self.tags or TIEPOINT in self.tags

    @property
    def nodata(self) -> float | None:
        return parse_nodata(self.tags.get(GDAL_NODATA))

    @property
    def raster_type(self) -> int:
        return _geokeys(self.tags.get(GEO_KEYS)).get(RASTER_TYPE_KEY, PIXEL_IS_AREA)

    def crs(self) -> str | None:
        """'EPSG:<code>' when the GeoKeys name one, else the citation; None without GeoKeys."""
        keys = _geokeys(self.tags.get(GEO_KEYS))
        if not keys:
            return None
        citation = None
        if CITATION_KEY in keys and isinstance(keys[CITATION_KEY], tuple):
            _tag, count, offset = keys[CITATION_KEY]
            text = self.tags.get(GEO_ASCII) or ""
            citation = text[offset : offset + count].rstrip("|").strip() or None
        for key in (PROJECTED_CS_KEY, GEOGRAPHIC_CS_KEY):
            code = keys.get(key)
            if isinstance(code, int) and 1024 <= code < 32767:
                return f"EPSG:{code}" + (f" ({citation})" if citation else "")
        return citation or "user-defined"

    def geotransform(self) -> list[float] | None:
        """GDAL's geotransform (x0, dx, rx, y0, ry, dy) of pixel corners, or None."""
        m = self.tags.get(TRANSFORMATION)
        if m is not None and len(m) == 16:
            a, b, _, d, e, f, _, h = m[:8]
            gt = [d, a, b, h, e, f]
        else:
            scale, ties = self.tags.get(PIXEL_SCALE), self.tags.get(TIEPOINT)
            if not scale or not ties or len(ties) < 6:
                return None
            i, j, _k, x, y, _z = ties[:6]
            sx, sy = scale[0], scale[1]
            gt = [x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy]
        if self.raster_type == PIXEL_IS_POINT:  # raster coordinates name centres: corner is half a pixel before
            gt[0] -= 0.5 * (gt[1] + gt[2])
            gt[3] -= 0.5 * (gt[4] + gt[5])
        return [float(v) for v in gt]

    def scaled(self, fx: float, fy: float) -> "GeoInfo":
        """The tags of the same raster with fx times the columns and fy times the rows."""
        tags = dict(self.tags)
        point = self.raster_type == PIXEL_IS_POINT
        if PIXEL_SCALE in tags:
            sx, sy, *rest = tags[PIXEL_SCALE]
            tags[PIXEL_SCALE] = (sx / fx, sy / fy, *rest)
        if TIEPOINT in tags:
            ties = list(tags[TIEPOINT])
            for n in range(0, len(ties) - 5, 6):
                ties[n] = (ties[n] + 0.5) * fx - 0.5 if point else ties[n] * fx
                ties[n + 1] = (ties[n + 1] + 0.5) * fy - 0.5 if point else ties[n + 1] * fy
            tags[TIEPOINT] = tuple(ties)
        if TRANSFORMATION in tags:
            m = list(tags[TRANSFORMATION])
            for row in (0, 4, 8):  # model = M @ (i, j, k, 1): columns i and j shrink
                a, b = m[row], m[row + 1]
                if point:  # new index i' names the point at old index (i' + 0.5) / fx - 0.5
                    m[row + 3] += a * (0.5 / fx - 0.5) + b * (0.5 / fy - 0.5)
                m[row], m[row + 1] = a / fx, b / fy
            tags[TRANSFORMATION] = tuple(m)
        if GDAL_METADATA in tags:
            tags[GDAL_METADATA] = without_statistics(tags[GDAL_METADATA])
        return GeoInfo(tags)

    def extratags(self) -> list[tuple]:
        """tifffile `extratags` writing these tags."""
        out = []
        for code in GEO_TAGS:
            value = self.tags.get(code)
            if value is None:
                continue
            if isinstance(value, str):
                out.append((code, 2, 0, value, True))
            else:
                out.append((code, _TIFF_DTYPE[code], len(value), tuple(value), True))
        return out

    def colorinterp(self) -> dict[int, str]:
        """Band index -> GDAL colour interpretation ('Red', 'Alpha', ...) from GDAL_METADATA."""
        return _items(self.tags.get(GDAL_METADATA), "COLORINTERP")

    def descriptions(self) -> dict[int, str]:
        return _items(self.tags.get(GDAL_METADATA), "DESCRIPTION")


def read_geo(page) -> GeoInfo | None:
    """The geo and GDAL tags of a tifffile page, or None when it has none."""
    tags = {}
    for code in GEO_TAGS:
        tag = page.tags.get(code)
        if tag is None:
            continue
        value = tag.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str):
            tags[code] = value
        else:
            tags[code] = tuple(float(v) if _TIFF_DTYPE[code] == 12 else int(v) for v in np.ravel(value))
    return GeoInfo(tags) if tags else None


def parse_nodata(text) -> float | None:
    """GDAL_NODATA is ASCII: '0', '-9999', 'nan', '-3.4028234663852886e+38'."""
    if text is None:
        return None
    text = str(text).strip().strip("\x00").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def nodata_text(value: float | None) -> str | None:
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def without_statistics(xml: str) -> str:
    """GDAL metadata minus the STATISTICS_* items (stale once the pixels change)."""
    return re.sub(r"[ \t]*<Item name=\"STATISTICS_[A-Z_]+\"[^>]*>[^<]*</Item>\r?\n?", "", xml)


def _items(xml, name: str) -> dict[int, str]:
    if not xml:
        return {}
    out = {}
    for match in re.finditer(r"<Item ([^>]*)>([^<]*)</Item>", xml):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if attrs.get("name", "").upper() == name and "sample" in attrs and attrs["sample"].isdigit():
            out[int(attrs["sample"])] = match.group(2).strip()
    return out


def _geokeys(directory) -> dict[int, object]:
    """GeoKeyDirectory -> {key: value}; values stored in another tag become (tag, count, offset)."""
    if not directory or len(directory) < 4:
        return {}
    keys = {}
    count = directory[3]
    for n in range(count):
        base = 4 + 4 * n
        if base + 3 >= len(directory):
            break
        key, location, number, value = directory[base : base + 4]
        keys[key] = value if location == 0 else (location, number, value)
    return keys


def describe_transform(geo: GeoInfo | None) -> str | None:
    """The geotransform as a JSON string for the manifest."""
    if geo is None:
        return None
    gt = geo.geotransform()
    return json.dumps(gt) if gt is not None else None
