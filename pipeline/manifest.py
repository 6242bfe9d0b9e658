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
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)
COLUMNS = SCHEMA.names


def manifest_dir(dst_root: str) -> str:
    return posixpath.join(dst_root, "_manifest")


def write_rows(fs, dst_root: str, run_id: str, worker: str, rows: list[dict]) -> str:
    """Write one worker's rows as a Parquet file; returns its path."""
    table = pa.Table.from_pylist([{c: row.get(c) for c in COLUMNS} for row in rows], schema=SCHEMA)
    path = posixpath.join(manifest_dir(dst_root), f"run_id={run_id}", f"part-{worker}.parquet")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table.drop_columns(["run_id"]), f)
    return path


def write_run_record(fs, dst_root: str, run_id: str, record: dict) -> str:
    """The run's JSON record; written after all rows, so its presence marks a finished run."""
    path = posixpath.join(manifest_dir(dst_root), "_runs", f"{run_id}.json")
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    return path


def read_manifest(fs, dst_root: str) -> pa.Table:
    """All rows of all runs under a destination (run_id restored from the partition)."""
    import pyarrow.dataset as ds

    root = manifest_dir(dst_root)
    files = [p for p in fs.find(root) if p.endswith(".parquet")] if fs.exists(root) else []
    if not files:
        return SCHEMA.empty_table()
    dataset = ds.dataset(files, filesystem=fs, format="parquet", partitioning="hive",
                         partition_base_dir=root)
    table = dataset.to_table()
    return table.select([c for c in COLUMNS if c in table.column_names])
