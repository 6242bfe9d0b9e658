"""The Parquet manifest: one row per image per run, plus a JSON file per run.

A row is a `ManifestRow` dataclass; the Parquet schema is derived from its fields. The
stages fill a row's fields as the image moves on; `fail` is the one way a row becomes
`failed`, so every failure reads the same: the error's type and one line that names
the stage and the cause, never a traceback.

Layout under the destination:
    _manifest/run_id=<id>/part-<worker>.parquet   rows (hive-partitioned by run_id)
    _manifest/_runs/<id>.json                     run configuration and counts, written last

The run records sit in `_runs` (leading underscore) so that Parquet readers given
the `_manifest` folder (pyarrow, pandas, duckdb) skip them.

Plain Parquet and JSON, readable by pyarrow, pandas or duckdb without this package.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from dataclasses import dataclass, fields

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.fs import write_atomic
from pipeline.store.retry import one_line

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
    stac_item_uri: str | None = None  # the output's STAC Item (stages/stac.py); null when not georeferenced
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



def manifest_dir(dst_root: str) -> str:
    return posixpath.join(dst_root, "_manifest")


def rows_part(run_id: str, worker: str, table: pa.Table) -> tuple[str, bytes]:
    """One worker's rows (a table of SCHEMA) as a Parquet file: (path relative to _manifest, bytes)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table.drop_columns(["run_id"]), sink)
    return f"run_id={run_id}/part-{worker}.parquet", sink.getvalue().to_pybytes()


def run_record(run_id: str, record: dict) -> tuple[str, bytes]:
    """The run's JSON record: (path relative to _manifest, bytes)."""
    return f"_runs/{run_id}.json", json.dumps(record, indent=2, sort_keys=True, default=str).encode()


def write_file(fs, dst_root: str, relative: str, data: bytes) -> str:
    """Write one manifest file atomically, with the storage retries; returns its path."""
    path = posixpath.join(manifest_dir(dst_root), relative)
    write_atomic(fs, path, data)  # makes local parent folders; object stores have none
    return path


def read_manifest(fs, dst_root: str) -> pa.Table:
    """All rows of all runs under a destination (run_id restored from the partition)."""
    root = manifest_dir(dst_root)
    files = [p for p in fs.find(root) if p.endswith(".parquet")] if fs.exists(root) else []
    if not files:
        return SCHEMA.empty_table()
    import pyarrow.dataset as ds  # half a second of imports (pandas): only when there is a manifest
    # The schema is given, not inferred from one file: parts written before a column
    # existed read it as null.
    dataset = ds.dataset(files, schema=SCHEMA, filesystem=fs, format="parquet", partitioning="hive",
                         partition_base_dir=root)
    table = dataset.to_table()
    return table.select([c for c in COLUMNS if c in table.column_names])


def latest_by_image(rows) -> dict[str, dict]:
    """The latest row of each image (by finished_at) among `rows` (dicts)."""
    latest: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["finished_at"] is None, r["finished_at"] or 0)):
        latest[row["image_id"]] = row
    return latest


def rows_in_order(fs, dst_root: str, columns: list[str]) -> list[dict]:
    """Every run's rows under a destination, oldest first, with only `columns`."""
    table = read_manifest(fs, dst_root)
    if table.num_rows == 0:
        return []
    return table.select(columns).sort_by([("finished_at", "ascending")]).to_pylist()
