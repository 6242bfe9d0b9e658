"""The Parquet manifest: one row per image per run, plus a JSON file per run.

Layout under the destination:
    _manifest/run_id=<id>/part-<worker>.parquet   rows (hive-partitioned by run_id)
    _manifest/_runs/<id>.json                     run configuration and counts, written last

The run records sit in `_runs` (leading underscore) so that Parquet readers given
the `_manifest` folder (pyarrow, pandas, duckdb) skip them.

Plain Parquet and JSON, readable by pyarrow, pandas or duckdb without this package.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store import write_atomic

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("image_id", pa.string()),
        ("config_key", pa.string()),  # hash of model sha256, scale, tile, overlap, precision, format
        ("src_uri", pa.string()),
        ("source_version", pa.string()),
        ("dst_uri", pa.string()),
        ("status", pa.string()),  # 'ok' | 'failed'
        ("error", pa.string()),
        ("error_type", pa.string()),
        ("attempt", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("channels", pa.int32()),
        ("dtype", pa.string()),
        ("src_format", pa.string()),
        ("src_mode", pa.string()),
        ("out_width", pa.int32()),
        ("out_height", pa.int32()),
        ("out_format", pa.string()),
        ("model", pa.string()),
        ("model_sha256", pa.string()),
        ("scale", pa.float64()),
        ("tile", pa.string()),
        ("overlap", pa.int32()),
        ("precision", pa.string()),
        ("device", pa.string()),
        ("worker", pa.string()),
        ("seconds_read", pa.float64()),
        ("seconds_infer", pa.float64()),
        ("seconds_write", pa.float64()),
        ("seconds_total", pa.float64()),
        ("lr_psnr", pa.float64()),
        ("psnr", pa.float64()),
        ("ssim", pa.float64()),
        ("lpips", pa.float64()),
        ("metrics_note", pa.string()),
        ("psnr_bands", pa.string()),  # JSON list, one PSNR per band (against --reference)
        ("sam", pa.float64()),  # spectral angle, degrees (against --reference, 2+ bands)
        # rasters (null for photos): strings are JSON where structured
        ("crs", pa.string()),  # "EPSG:32618 (WGS 84 / UTM zone 18N)"
        ("transform_in", pa.string()),  # GDAL geotransform [x0, dx, rx, y0, ry, dy]
        ("transform_out", pa.string()),
        ("nodata", pa.string()),
        ("bands", pa.string()),  # count, band mode, model inputs, alpha, names
        ("radiometric", pa.string()),  # scaling to the model's [0, 1]: mode, per-band [lo, hi]
        ("stream_windows", pa.int32()),  # windows read when streamed, else null
        ("dicom_sop_uid_in", pa.string()),
        ("dicom_sop_uid_out", pa.string()),
        ("dicom_series_uid_in", pa.string()),
        ("dicom_series_uid_out", pa.string()),
        ("pixel_spacing_in", pa.string()),  # DICOM [row, column] spacing, mm
        ("pixel_spacing_out", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)
COLUMNS = SCHEMA.names


def manifest_dir(dst_root: str) -> str:
    return posixpath.join(dst_root, "_manifest")


def rows_part(run_id: str, worker: str, rows: list[dict]) -> tuple[str, bytes]:
    """One worker's rows as a Parquet file: (path relative to _manifest, bytes)."""
    table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SCHEMA)
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
    import pyarrow.dataset as ds

    root = manifest_dir(dst_root)
    files = [p for p in fs.find(root) if p.endswith(".parquet")] if fs.exists(root) else []
    if not files:
        return SCHEMA.empty_table()
    # The schema is given, not inferred from one file: parts written before a column
    # existed read it as null.
    dataset = ds.dataset(files, schema=SCHEMA, filesystem=fs, format="parquet", partitioning="hive",
                         partition_base_dir=root)
    table = dataset.to_table()
    return table.select([c for c in COLUMNS if c in table.column_names])
