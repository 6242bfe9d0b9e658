"""Rasters (GeoTIFF, multi-band or signed TIFF, DICOM): how their bands reach the model and come back.

An SR model takes one RGB image (or one gray plane) in [0, 1]. A raster may have any
number of bands, 16-bit or signed samples, float values, nodata, an alpha band, or
(DICOM) stored values that mean something only through a modality LUT. A `BandPlan`
decides, once per image, how each band is fed to the model and mapped back; both the
in-memory path (stages/read.py, stages/infer.py) and the streaming path (stages/stream.py, one window at a time)
apply the same plan, so a streamed image and an in-memory one agree.

Band modes (``--band-mode``):

- ``rgb+gray`` (default): three bands go through the model together as R, G, B: the
  bands GDAL_METADATA labels Red, Green and Blue when it does (in that order, so a
  B, G, R, NIR file still gives the model R, G, B), else the first three. Every other
  band goes alone through the gray path (the model sees it as three equal channels,
  and the output is their mean). With fewer than three data bands every band is gray.
  Why: the model was trained on RGB, so the bands that are RGB should be seen as such;
  the others have no colour partner, and the gray path is what the model does for gray
  photos.
- ``each``: every band alone through the gray path. Slower (one pass per band), but no
  band's output depends on another band: the choice for spectral analysis.

The alpha band (TIFF ExtraSamples alpha, or GDAL COLORINTERP Alpha) never goes through
the model. GDAL reads it as the validity mask, so it is upscaled like the mask below
(nearest neighbour), not smoothed into partial validity.

Radiometric scaling (``--radiometric``), from the data's values to the model's [0, 1]:
``unit = (value - lo) / (hi - lo)``, and back ``value = unit * (hi - lo) + lo``, rounded
and clipped to the type's (or DICOM BitsStored's) range for integers. It is recorded per
band in the manifest (``radiometric`` column), so it can be undone or reproduced.

- ``dtype``: lo, hi = the sample type's range (uint8 0..255, uint16 0..65535, int16
  -32768..32767; DICOM: the BitsStored range through the modality LUT). Float data has
  no such range and falls back to ``minmax``.
- ``minmax``: lo, hi = the smallest and largest value of the image's bands, values equal
  to nodata left out; the three bands of an RGB triplet share one range (min of their
  minima, max of their maxima) so the model sees their true relative brightness, which
  keeps spectral angles; a gray band has its own.
- ``auto`` (default): ``dtype`` for uint8, ``minmax`` otherwise. 16-bit imagery rarely
  fills 0..65535 (Sentinel-2 reflectance is about 0..10000, 12-bit sensors stop at
  4095), and mapped by the full range the model would see a nearly black image.

Plain photos (no geo tags, no nodata, 1 to 4 channels of uint8/uint16/float32): 8-bit and
float photos keep the engine's own mapping (the type's range, ``photos="dtype"``); 16-bit
photos are mapped by their own range (``photos="auto"``, the default, picks ``minmax`` for
uint16). With ``photos="minmax"`` an integer photo's colour channels share one range, their min and
max (alpha keeps the type's range), and the output is clipped to that range as the
type's range clips it otherwise (what lies beyond is the model's ringing): the mapping
16-bit photos need, since a 16-bit scan rarely fills 0..65535 and a CNN handed a nearly
black image (291..694 is 0.004..0.011) answers with values far outside the input's range
(tests/formats/test_fidelity.py).

Nodata (GDAL_NODATA; DICOM PixelPaddingValue; alpha = 0; NaN in float data): a pixel is
nodata when all its data bands equal the nodata value (GDAL's dataset mask) or its alpha
is 0. Before inference nodata pixels are filled with the value of the nearest valid
pixel, so the fill value (often 0) never bleeds into valid pixels at the edge; after
inference every output pixel whose centre lies in a nodata input pixel (nearest-neighbour
upscaling of the mask) is set back to nodata. A valid output pixel that happens to come
out equal to nodata in every band gets its first band moved by one step, so it is not
read as nodata.

A nodata value the sample type cannot hold (-10000 in uint8 data, 0.5 in integers, 1e40 in
float32) matches no pixel, so for masking and restoring it is no nodata at all
(`usable_nodata`); it stays in RasterInfo.nodata and its GDAL_NODATA tag is carried
verbatim, as GDAL itself keeps such a value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

BAND_MODES = ("rgb+gray", "each")
RADIOMETRIC_MODES = ("auto", "minmax", "dtype")
RASTER_FORMATS = ("cog", "gtiff")  # how georeferenced rasters are written (formats/gdal.py)
RASTER_COMPRESSIONS = ("deflate", "zstd", "lzw", "none")


@dataclass
class RasterInfo:
    """What raster-aware processing needs to know about a decoded image."""

    kind: str  # "geotiff" | "tiff" | "dicom"
    bands: int
    nodata: float | None = None
    alpha: int | None = None  # band index of an alpha band
    names: dict[int, str] = field(default_factory=dict)  # band -> colour interpretation ("Red", ...)
    geo: object | None = None  # geo.GeoInfo
    photometric: str = "minisblack"  # TIFF output: "rgb" | "minisblack"
    extrasamples: tuple = ()  # TIFF ExtraSamples of the source
    value_map: object | None = None  # DICOM modality LUT: .forward(stored), .inverse(values), .domain
    stored_range: tuple[float, float] | None = None  # valid stored values (DICOM BitsStored)
    frames: int = 1  # DICOM multi-frame: the pixels are H x W x (frames x bands), frame-major
    mask: bool = False  # the last band is the file's per-dataset mask (GDAL), as alpha: written back as a mask


class BandStats:
    """Per-band minimum and maximum of the values that are not nodata (nor NaN), over
    one array or many windows of the same image."""

    def __init__(self, bands: int, nodata: float | None = None, value_map=None):
        self.lo = np.full(bands, np.inf)
        self.hi = np.full(bands, -np.inf)
        self.nodata, self.value_map = nodata, value_map

    def update(self, pixels: np.ndarray, band_offset: int = 0) -> "BandStats":
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        for k in range(pixels.shape[-1]):
            values = pixels[..., k].ravel()
            keep = _not_nodata(values, self.nodata)
            if keep is not None:
                values = values[keep]
            if self.value_map is not None and values.size:
                values = self.value_map.forward(values)
            if values.size:
                b = band_offset + k
                self.lo[b] = min(self.lo[b], float(np.min(values)))
                self.hi[b] = max(self.hi[b], float(np.max(values)))
        return self


def nodata_text(value: float | None) -> str | None:
    """A nodata value as GDAL writes it: '0', '-9999', 'nan' (the manifest's `nodata`)."""
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def usable_nodata(nodata: float | None, dtype) -> float | None:
    """The nodata value as the sample type holds it (float32 rounds it, as GDAL casts it), or
    None when the type cannot hold it, or for NaN in integers: then no pixel can equal it."""
    if nodata is None:
        return None
    try:
        nodata = float(nodata)
    except (TypeError, ValueError, OverflowError):
        return None
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if not math.isfinite(nodata) or not nodata.is_integer() or not info.min <= nodata <= info.max:
            return None
        return nodata
    if np.issubdtype(dtype, np.floating):
        if math.isnan(nodata) or math.isinf(nodata):
            return nodata
        if abs(nodata) > float(np.finfo(dtype).max):
            return None
        return float(dtype.type(nodata))
    return None


def _not_nodata(values: np.ndarray, nodata: float | None) -> np.ndarray | None:
    keep = None
    if np.issubdtype(values.dtype, np.floating):
        keep = ~np.isnan(values)
    nodata = usable_nodata(nodata, values.dtype)
    if nodata is not None and not math.isnan(nodata):
        match = values != nodata
        keep = match if keep is None else keep & match
    return keep


def valid_mask(pixels: np.ndarray, nodata: float | None, alpha: int | None) -> np.ndarray | None:
    """H x W booleans, True where the pixel holds data; None when every pixel does."""
    bands = [b for b in range(pixels.shape[2]) if b != alpha]
    data = pixels[..., bands]
    nodata = usable_nodata(nodata, pixels.dtype)
    invalid = None
    if np.issubdtype(data.dtype, np.floating):
        invalid = np.isnan(data).all(axis=2)
    if nodata is not None and not math.isnan(nodata):
        hit = (data == nodata).all(axis=2)
        invalid = hit if invalid is None else invalid | hit
    if alpha is not None:
        transparent = pixels[..., alpha] == 0
        invalid = transparent if invalid is None else invalid | transparent
    if invalid is None or not invalid.any():
        return None
    return ~invalid


def fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each invalid pixel takes the values of its nearest valid pixel (Euclidean)."""
    from scipy.ndimage import distance_transform_edt

    iy, ix = distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return values[iy, ix]


def nearest_rows(in_length: int, out_length: int) -> np.ndarray:
    """For each output row, the input row that contains its centre."""
    index = np.floor((np.arange(out_length) + 0.5) * in_length / out_length).astype(np.int64)
    return np.minimum(index, in_length - 1)


@dataclass
class BandPlan:
    """How one image's bands go through the model and come back (see the module doc)."""

    dtype: np.dtype
    bands: int
    groups: list[tuple[int, ...]]  # model inputs: (r, g, b) triplets or (band,) gray planes
    ranges: list[tuple[float, float] | None]  # per band (lo, hi) in working values; None for alpha
    radiometric: str  # the mode used: "dtype" | "minmax"
    band_mode: str  # "rgb+gray" | "each" | "plain"
    alpha: int | None = None
    alpha_resample: str = "nearest"  # "nearest" (rasters) | "engine" (plain photos: bicubic alpha path)
    nodata: float | None = None
    stored_range: tuple[float, float] | None = None
    value_map: object | None = None
    names: dict[int, str] = field(default_factory=dict)
    clamp: bool = False  # model outputs clipped to [0, 1], i.e. to `ranges` (photos="minmax")

    @property
    def data_bands(self) -> list[int]:
        return [b for b in range(self.bands) if b != self.alpha]

    def valid(self, pixels: np.ndarray) -> np.ndarray | None:
        if self.alpha_resample == "engine":  # plain photos: no nodata semantics
            return None
        return valid_mask(pixels, self.nodata, self.alpha)

    def inputs(self, pixels: np.ndarray, valid: np.ndarray | None) -> list[np.ndarray]:
        """Model inputs: float32 H x W x C in [0, 1] (C = 1 or 3, plus alpha on the first
        for plain photos), nodata filled from valid neighbours. An empty list when no pixel is
        valid: there is nothing to infer (see `restore`)."""
        if valid is not None and not valid.any():
            return []
        data = pixels.astype(np.float64 if self.value_map is not None else np.float32, copy=False)
        if self.value_map is not None:
            data = data.copy()
            for b in self.data_bands:
                data[..., b] = self.value_map.forward(pixels[..., b])
        if valid is not None:
            data = fill_invalid(data, valid)
        out = []
        for n, group in enumerate(self.groups):
            planes = [self._to_unit(data[..., b], b) for b in group]
            if n == 0 and self.alpha is not None and self.alpha_resample == "engine":
                planes.append(self._to_unit(data[..., self.alpha], self.alpha))
            out.append(np.stack(planes, axis=2))
        return out

    def _to_unit(self, plane: np.ndarray, band: int) -> np.ndarray:
        lo, hi = self.ranges[band]
        unit = (plane.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
        return np.clip(np.nan_to_num(unit, nan=0.0), 0.0, 1.0)

    def restore(self, outputs: list[np.ndarray], pixels: np.ndarray, valid: np.ndarray | None,
                out_hw: tuple[int, int]) -> np.ndarray:
        """Upscaled model outputs -> out_hw x bands in the source dtype, nodata restored.
        With no outputs (no valid pixel), every data band is nodata."""
        oh, ow = out_hw
        out = np.zeros((oh, ow, self.bands), dtype=np.float64 if self.value_map is not None else np.float32)
        for n, (group, array) in enumerate(zip(self.groups, outputs)):
            for j, b in enumerate(group):
                out[..., b] = self._from_unit(array[..., j], b)
            if n == 0 and self.alpha is not None and self.alpha_resample == "engine":
                out[..., self.alpha] = self._from_unit(array[..., -1], self.alpha)
        rows, cols = nearest_rows(pixels.shape[0], oh), nearest_rows(pixels.shape[1], ow)
        if self.alpha is not None and self.alpha_resample == "nearest":
            out[..., self.alpha] = pixels[rows][:, cols, self.alpha]
        if self.value_map is not None:
            for b in self.data_bands:
                out[..., b] = self.value_map.inverse(out[..., b])
        result = self._to_dtype(out)
        if valid is not None:
            self._restore_nodata(result, valid[rows][:, cols])
        return result

    def _from_unit(self, unit: np.ndarray, band: int) -> np.ndarray:
        lo, hi = self.ranges[band]
        if self.clamp:
            unit = np.clip(unit, 0.0, 1.0)
        if self.value_map is not None:
            return unit.astype(np.float64) * (hi - lo) + lo
        return unit * np.float32(hi - lo) + np.float32(lo)

    def _to_dtype(self, out: np.ndarray) -> np.ndarray:
        if np.issubdtype(self.dtype, np.integer):
            lo, hi = self.stored_range or _type_range(self.dtype)
            if self.dtype.itemsize == 4:  # float32 cannot hold 2**32 - 1: it would round up and wrap to 0
                out = out.astype(np.float64, copy=False)
            return np.clip(np.rint(out), lo, hi).astype(self.dtype)
        return out.astype(self.dtype)

    def _restore_nodata(self, result: np.ndarray, valid_out: np.ndarray) -> None:
        data = self.data_bands
        fill = self.nodata if self.nodata is not None else np.nan
        if math.isnan(fill) and np.issubdtype(self.dtype, np.integer):
            return  # an integer image cannot hold NaN: the alpha band carries the mask
        invalid = ~valid_out
        for b in data:
            result[..., b][invalid] = fill
        if self.nodata is None or math.isnan(self.nodata) or math.isinf(self.nodata):
            return
        collide = valid_out & (result[..., data] == self.nodata).all(axis=2)
        if collide.any():
            if np.issubdtype(self.dtype, np.integer):
                lo, hi = self.stored_range or _type_range(self.dtype)
                moved = self.nodata + 1 if self.nodata + 1 <= hi else self.nodata - 1
            else:  # the next representable value up (down at the type's maximum)
                toward = np.inf if self.nodata < float(np.finfo(self.dtype).max) else -np.inf
                moved = np.nextafter(self.dtype.type(self.nodata), self.dtype.type(toward))
            result[..., data[0]][collide] = moved

    def psnr_peak(self) -> float:
        """PSNR peak in the native bit depth: the stored range (DICOM BitsStored), the integer
        type's span (255, 65535 for uint16 and int16), or for float data the span of the valid
        values when they leave [0, 1], else 1."""
        if self.stored_range is not None:
            return self.stored_range[1] - self.stored_range[0]
        if np.issubdtype(self.dtype, np.integer):
            lo, hi = _type_range(self.dtype)
            return hi - lo
        spans = [r for b, r in enumerate(self.ranges) if r is not None and b != self.alpha]
        lo, hi = min(r[0] for r in spans), max(r[1] for r in spans)
        return (hi - lo) or 1.0 if (lo < 0.0 or hi > 1.0) else 1.0

    # ------------------------------------------------------------------ manifest

    def bands_json(self) -> str:
        record = {"count": self.bands, "band_mode": self.band_mode,
                  "model_inputs": [list(g) for g in self.groups], "alpha": self.alpha}
        if self.alpha is not None:
            record["alpha_resample"] = self.alpha_resample
        if self.names:
            record["names"] = [self.names.get(b) for b in range(self.bands)]
        return json.dumps(record)

    def radiometric_json(self) -> str:
        return json.dumps({
            "mode": self.radiometric,
            "domain": getattr(self.value_map, "domain", "stored"),
            "to": [0.0, 1.0],
            "ranges": [None if r is None else [float(r[0]), float(r[1])] for r in self.ranges],
            "inverse": "value = unit * (hi - lo) + lo" + (", rounded and clipped" if
                                                          np.issubdtype(self.dtype, np.integer) else ""),
        })


def _type_range(dtype: np.dtype) -> tuple[float, float]:
    info = np.iinfo(dtype)
    return float(info.min), float(info.max)


PHOTO_MODES = ("auto", "dtype", "minmax")


def make_plan(info: RasterInfo | None, dtype, bands: int, stats: BandStats, *, band_mode: str = "rgb+gray",
              radiometric: str = "auto", photos: str = "auto") -> BandPlan:
    """Decide the plan from the image's layout and its band statistics. `radiometric` is for
    rasters, `photos` for plain photos (info None): see the module doc."""
    dtype = np.dtype(dtype)
    if photos not in PHOTO_MODES:
        raise ValueError(f"photo scaling must be one of {PHOTO_MODES}, not {photos!r}")
    if photos == "auto":
        photos = "minmax" if dtype == np.uint16 else "dtype"
    if band_mode not in BAND_MODES:
        raise ValueError(f"band mode must be one of {BAND_MODES}, not {band_mode!r}")
    if radiometric not in RADIOMETRIC_MODES:
        raise ValueError(f"radiometric scaling must be one of {RADIOMETRIC_MODES}, not {radiometric!r}")
    if info is None:
        return _plain_plan(dtype, bands, stats, photos)
    alpha = info.alpha
    data = [b for b in range(bands) if b != alpha]
    groups: list[tuple[int, ...]]
    if band_mode == "rgb+gray" and len(data) >= 3:
        named = {name.lower(): b for b, name in info.names.items() if b in data}
        if all(c in named for c in ("red", "green", "blue")):
            triplet = (named["red"], named["green"], named["blue"])
        else:
            triplet = tuple(data[:3])
        groups = [triplet] + [(b,) for b in data if b not in triplet]
    else:
        groups = [(b,) for b in data]
    mode = radiometric
    if mode == "auto":
        mode = "dtype" if dtype == np.uint8 else "minmax"
    if mode == "dtype" and not np.issubdtype(dtype, np.integer):
        mode = "minmax"
    ranges: list[tuple[float, float] | None] = [None] * bands
    if mode == "dtype":
        lo, hi = info.stored_range or _type_range(dtype)
        if info.value_map is not None:
            lo, hi = sorted(float(v) for v in info.value_map.forward(np.array([lo, hi], dtype=np.float64)))
        for b in data:
            ranges[b] = (lo, hi if hi > lo else lo + 1.0)
    else:
        for group in groups:
            lo = float(np.min(stats.lo[list(group)]))
            hi = float(np.max(stats.hi[list(group)]))
            if not np.isfinite(lo) or not np.isfinite(hi):  # no valid value at all
                lo, hi = 0.0, 1.0
            for b in group:
                ranges[b] = (lo, hi if hi > lo else lo + 1.0)
    return BandPlan(dtype=dtype, bands=bands, groups=groups, ranges=ranges, radiometric=mode,
                    band_mode=band_mode, alpha=alpha, alpha_resample="nearest",
                    nodata=usable_nodata(info.nodata, dtype),
                    stored_range=info.stored_range, value_map=info.value_map, names=dict(info.names))


def _plain_plan(dtype: np.dtype, bands: int, stats: BandStats, photos: str = "dtype") -> BandPlan:
    """The engine's own mapping for photos (used when a plain TIFF is streamed): the type's
    range for integers (their colour channels' min and max with photos="minmax");
    floats as they are when within [0, 1], else by their min and max over all channels;
    gray through the gray path, alpha through the engine's alpha path."""
    groups = [(0, 1, 2)] if bands >= 3 else [(0,)]
    alpha = bands - 1 if bands in (2, 4) else None
    if np.issubdtype(dtype, np.integer) and photos == "minmax":
        color = list(groups[0])
        lo, hi = float(np.min(stats.lo[color])), float(np.max(stats.hi[color]))
        if not np.isfinite(lo) or not np.isfinite(hi):
            lo, hi = _type_range(dtype)
        ranges = [(lo, hi if hi > lo else lo + 1.0)] * bands
        if alpha is not None:
            ranges[alpha] = _type_range(dtype)
        return BandPlan(dtype=dtype, bands=bands, groups=groups, ranges=ranges, radiometric="minmax",
                        band_mode="plain", alpha=alpha, alpha_resample="engine", clamp=True)
    if np.issubdtype(dtype, np.integer):
        lo, hi = _type_range(dtype)
        mode = "dtype"
    else:
        lo = float(np.min(stats.lo)) if np.isfinite(stats.lo).any() else 0.0
        hi = float(np.max(stats.hi)) if np.isfinite(stats.hi).any() else 1.0
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        mode = "minmax"
    ranges = [(lo, hi if hi > lo else lo + 1.0)] * bands
    return BandPlan(dtype=dtype, bands=bands, groups=groups, ranges=ranges, radiometric=mode, band_mode="plain",
                    alpha=alpha, alpha_resample="engine")


@dataclass
class FramePlan:
    """A multi-frame image (DICOM), H x W x (frames x bands) frame-major: every frame goes through
    one BandPlan, whose ranges are taken over all frames so that the frames map alike, with a
    validity mask of its own; stages/infer.py runs the frames in groups, so memory stays bounded
    whatever the frame count."""

    frame: BandPlan
    frames: int

    @property
    def dtype(self) -> np.dtype:
        return self.frame.dtype

    @property
    def bands(self) -> int:
        return self.frame.bands * self.frames

    def pixels_of(self, pixels: np.ndarray, index: int) -> np.ndarray:
        return pixels[..., index * self.frame.bands : (index + 1) * self.frame.bands]

    def bands_json(self) -> str:
        return json.dumps({**json.loads(self.frame.bands_json()), "frames": self.frames})

    def radiometric_json(self) -> str:
        return self.frame.radiometric_json()


def plan_for(pixels: np.ndarray, info: RasterInfo | None, *, band_mode: str = "rgb+gray",
             radiometric: str = "auto", photos: str = "auto") -> BandPlan | FramePlan:
    """The plan of an image held in memory (a FramePlan for a multi-frame one)."""
    nodata = info.nodata if info is not None else None
    value_map = info.value_map if info is not None else None
    frames = info.frames if info is not None else 1
    bands = pixels.shape[2] // frames
    stats = BandStats(bands, nodata, value_map)
    for index in range(frames):  # frame by frame: the float temporaries of one frame at a time
        stats.update(pixels[..., index * bands : (index + 1) * bands])
    plan = make_plan(info, pixels.dtype, bands, stats, band_mode=band_mode, radiometric=radiometric, photos=photos)
    return plan if frames == 1 else FramePlan(plan, frames)
