"""Score: quality metrics of a written output, completing its row.

`lr_psnr` always (no reference needed: the output downscaled against the input); with
`--reference`, PSNR/SSIM (Y channel for RGB photos, all data bands for rasters, shave =
scale), per-band PSNR, SAM and LPIPS. A metric that cannot be computed is a note in the
row, not a failure; an error raised while scoring fails the image (the output is then
redone by `upscaler rerun`).
"""

from __future__ import annotations

import json
import math
import posixpath
import re

import numpy as np

from pipeline import formats, metrics, raster, store
from pipeline.stages import ImageWork, stage


def score(work: ImageWork, reference=None) -> ImageWork:
    """Metrics of an `ok` output (streamed images, volumes and multi-frame images have their
    lr_psnr from the window, slice or frame loop)."""
    volume, frames = work.decoded is not None and formats.is_volume(work.decoded), isinstance(work.plan, raster.FramePlan)
    if work.alive and work.output is not None and (volume or frames):
        if reference is not None:
            work.row.note(f"reference metrics are not computed for {'volumes' if volume else 'multi-frame images'}")
    elif work.alive and work.output is not None:
        with stage(work, "score"):
            values = metrics_for(work.decoded.pixels, work.output, work.source.key, reference,
                                 plan=work.plan, valid=work.valid)
            note = values.pop("metrics_note", None)
            work.row.update(values)
            if note:
                work.row.note(note)
    elif work.alive and reference is not None and work.row.stream_windows:
        work.row.note("reference metrics are not computed for streamed images")
    work.release()
    return work


def metrics_for(lr: np.ndarray, sr: np.ndarray, key: str, reference, *,
                plan: raster.BandPlan | None = None, valid: np.ndarray | None = None) -> dict:
    """lr_psnr always (native bit depth; rasters: valid pixels and data bands only);
    with a reference image PSNR/SSIM (Y channel for RGB photos, all data bands for
    rasters, shave = scale), per-band PSNR, SAM (degrees, two bands or more) and LPIPS
    (photos). A metric problem is a note, not a failure."""
    is_raster = plan is not None and plan.alpha_resample == "nearest"
    if is_raster:
        peak = plan.psnr_peak()
        value = metrics.lr_psnr(sr, lr, valid=valid, data_range=peak, bands=plan.data_bands)
        values: dict = {"lr_psnr": None if math.isnan(value) else value}  # NaN: no valid pixel
    else:
        values = {"lr_psnr": metrics.lr_psnr(sr, lr)}
    if reference is None:
        return values
    notes = []
    try:
        hr = reference.find(key, sr.shape)
        if hr is None:
            return {**values, "metrics_note": "no reference image found"}
        shave = math.ceil(sr.shape[1] / lr.shape[1])
        if is_raster:
            bands = plan.data_bands
            a, b = sr[..., bands], hr[..., bands]
            keep = None
            if valid is not None:
                keep = valid[raster.nearest_rows(lr.shape[0], sr.shape[0])][:, raster.nearest_rows(lr.shape[1], sr.shape[1])]
            per_band = metrics.psnr_bands(a, b, data_range=peak, shave=shave, valid=keep)
            values["psnr_bands"] = json.dumps(per_band)
            values["psnr"] = _psnr_all(a, b, peak, shave, keep)
            if keep is None and min(a.shape[:2]) - 2 * shave >= 11:
                values["ssim"] = metrics.ssim(a.astype(np.float64), b.astype(np.float64), data_range=peak,
                                              shave=shave)
            if len(bands) >= 2:
                values["sam"] = _sam(a, b, shave, keep)
            notes.append("lpips: not computed for rasters")
        else:
            y = sr.shape[2] in (3, 4)
            a, b = (sr[..., :3], hr[..., :3]) if y else (sr, hr)
            values["psnr"] = metrics.psnr(a, b, y_channel=y, shave=shave)
            values["ssim"] = metrics.ssim(a, b, y_channel=y, shave=shave)
            peak = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
            values["psnr_bands"] = json.dumps(metrics.psnr_bands(a, b, data_range=peak, shave=shave))
            if a.shape[2] >= 2:
                values["sam"] = _sam(a, b, shave, None)
            value, reason = metrics.lpips_value(a, b)
            values["lpips"] = value
            if reason:
                notes.append(f"lpips: {reason}")
    except Exception as error:
        notes.append(f"reference metrics failed: {error}")
    if notes:
        values["metrics_note"] = "; ".join(notes)
    return values


def _crop_mask(shape, shave: int, keep):
    mask = np.ones(shape[:2], bool) if keep is None else keep.copy()
    if shave:
        mask[:shave], mask[-shave:], mask[:, :shave], mask[:, -shave:] = False, False, False, False
    return mask


def _psnr_all(a, b, peak, shave, keep) -> float:
    mask = _crop_mask(a.shape, shave, keep)
    diff = a[mask].astype(np.float64) - b[mask].astype(np.float64)
    mse = float(np.mean(diff * diff)) if diff.size else math.nan
    return math.inf if mse == 0 else float(10 * np.log10(peak**2 / mse))


def _sam(a, b, shave, keep) -> float:
    mask = _crop_mask(a.shape, shave, keep)
    return metrics.sam_degrees(a[mask][:, None, :], b[mask][:, None, :])


class Reference:
    """High-resolution references for PSNR/SSIM: same relative key under a root,
    or the same stem with any image extension, with an 'x4'-style suffix removed."""

    def __init__(self, root: str, storage_options: dict | None = None):
        self.fs, self.root = store.open_location(root, storage_options)
        self.options = storage_options
        self.index: dict[str, str] = {}
        for path in self.fs.find(self.root):
            stem = posixpath.splitext(posixpath.relpath(path, self.root))[0]
            self.index.setdefault(stem, path)

    def find(self, key: str, shape: tuple) -> np.ndarray | None:
        stem = posixpath.splitext(key)[0]
        for candidate in (stem, re.sub(r"[_-]?x\d+$", "", stem, flags=re.IGNORECASE)):
            if candidate in self.index:
                path = self.index[candidate]
                hr = formats.decode_image(self.fs.cat_file(path), name=path).pixels
                h, w = shape[:2]
                if hr.shape[0] < h or hr.shape[1] < w or hr.shape[2] != shape[2]:
                    raise ValueError(f"reference {path} is {hr.shape}, output is {tuple(shape)}")
                return hr[:h, :w]  # HR larger than a multiple of the scale: crop, as the protocol does
        return None
