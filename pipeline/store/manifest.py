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

from pipeline.run.row import COLUMNS, SCHEMA  # noqa: E402  (the row dataclass defines the columns)


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
