"""One manifest row per image per run: a dataclass, and the Parquet schema derived from it.

The stages fill a row's fields as the image moves on; `fail` is the one way a row
becomes `failed`, so every failure reads the same: the error's type and one line that
names the stage and the cause, never a traceback.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

import pyarrow as pa

from pipeline.store import one_line

_ARROW = {"str": pa.string(), "int": pa.int32(), "float": pa.float64(), "datetime": pa.timestamp("us", tz="UTC")}


@dataclass
class ManifestRow:
    run_id: str | None = None
    image_id: str | None = None  # the source key, relative to SRC
    config_key: str | None = None  # spec.RunSpec.config_key: the resolved output settings
    src_uri: str | None = None
    source_version: str | None = None  # ETag, or size and mtime
    dst_uri: str | None = None
    status: str | None = None  # 'ok' | 'failed'
    error: str | None = None  # one line
    error_type: str | None = None
    attempt: int | None = 1
    width: int | None = None
    height: int | None = None
    channels: int | None = None
    dtype: str | None = None
    src_format: str | None = None
    src_mode: str | None = None
    out_width: int | None = None
    out_height: int | None = None
    out_format: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    scale: float | None = None
    tile: str | None = None  # the tile used for this image, input pixels; "0" = whole image
    overlap: int | None = None  # the overlap used for this image
    precision: str | None = None
    device: str | None = None
    worker: str | None = None
    seconds_read: float | None = None
    seconds_infer: float | None = None
    seconds_write: float | None = None
    seconds_total: float | None = None
    lr_psnr: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    metrics_note: str | None = None  # also what was dropped on the way (e.g. a broken EXIF)
    psnr_bands: str | None = None  # JSON list, one PSNR per band (against --reference)
    sam: float | None = None  # spectral angle, degrees (against --reference, 2+ bands)
    # rasters (null for photos): strings are JSON where structured
    crs: str | None = None  # "EPSG:32618 (WGS 84 / UTM zone 18N)"
    transform_in: str | None = None  # GDAL geotransform [x0, dx, rx, y0, ry, dy]
    transform_out: str | None = None
    nodata: str | None = None
    bands: str | None = None  # count, band mode, model inputs, alpha, names
    radiometric: str | None = None  # scaling to the model's [0, 1]: mode, per-band [lo, hi]
    stream_windows: int | None = None  # windows read when streamed, else null
    dicom_sop_uid_in: str | None = None
    dicom_sop_uid_out: str | None = None
    dicom_series_uid_in: str | None = None
    dicom_series_uid_out: str | None = None
    pixel_spacing_in: str | None = None  # DICOM [row, column] spacing, mm
    pixel_spacing_out: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, error: BaseException, stage: str) -> None:
        self.status, self.error_type = "failed", type(error).__name__
        self.error = f"{stage}: {one_line(error)}"
        if isinstance(error, MemoryError) and self.width:  # how much was asked, in the image's terms
            self.error += f" (a {self.width} x {self.height} x {self.channels} {self.dtype} image)"

    def note(self, text: str) -> None:
        self.metrics_note = f"{self.metrics_note}; {text}" if self.metrics_note else text

    def update(self, values: dict) -> None:
        for name, value in values.items():
            if name not in COLUMNS:
                raise KeyError(f"no manifest column {name!r}")
            setattr(self, name, value)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_dict(cls, values: dict) -> "ManifestRow":
        return cls(**{name: values.get(name) for name in COLUMNS})


def _arrow_type(annotation: str) -> pa.DataType:
    return _ARROW[annotation.split("|")[0].strip().split(".")[-1]]


COLUMNS = tuple(f.name for f in fields(ManifestRow))
SCHEMA = pa.schema([(f.name, _arrow_type(f.type)) for f in fields(ManifestRow)])


def to_table(rows: list[ManifestRow]) -> pa.Table:
    return pa.Table.from_pylist([row.as_dict() for row in rows], schema=SCHEMA)
