"""Storage that goes down mid-run and stays down (issue 7): the run ends with a
clear error instead of a traceback, keeps the rows it could not write in a local
spool, stops attempting images once storage failures pile up, and a later
`upscaler rerun` uploads the spool and completes the run: nothing lost, nothing
duplicated. Real S3 (moto's server) behind a TCP proxy that cuts every connection."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import s3fs
from PIL import Image

from benchmarks.faults import FlakyProxy
from pipeline import cli, store
from pipeline.store import retry
from pipeline.store import manifest
from pipeline.store import spool
from pipeline.job.local import run_local
from pipeline.spec import RunSpec

IMAGES = 16  # enough that some images are still unread when the circuit opens (up to ~8 are in flight)


@pytest.fixture
def outage(s3, monkeypatch, tmp_path):
    """(direct fs, proxied storage options, src, dst, proxy) with IMAGES sources uploaded."""
    options, bucket = s3
    direct = s3fs.S3FileSystem(**options)
    for i in range(IMAGES):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(i).integers(0, 255, (24, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        direct.pipe_file(f"{bucket[5:]}/src/img{i:02d}.png", buffer.getvalue())
    proxy = FlakyProxy(int(options["endpoint_url"].rsplit(":", 1)[1]))
    proxied = {**options, "endpoint_url": f"http://127.0.0.1:{proxy.port}",
               "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5}}
    monkeypatch.setattr(retry, "RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(retry, "RETRY_FIRST_DELAY", 0.01)
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs's own retry loop (~2 s a call)
    monkeypatch.setenv("UPSCALER_SPOOL", str(tmp_path / "spool"))
    return direct, proxied, f"{bucket}/src", f"{bucket}/dst", proxy


def cut_after_outputs(monkeypatch, proxy, count: int) -> list[str]:
    """Storage goes down for good right after the `count`-th output is written.
    Returns the outputs written (a second writer thread may finish one more)."""
    written = []
    real = store.write_atomic

    def write_atomic(fs, path, data):
        real(fs, path, data)
        if "_manifest" not in path:
            written.append(path)
            if len(written) == count:
                proxy.cut()

    monkeypatch.setattr(store, "write_atomic", write_atomic)
    return written


def test_storage_that_stays_down_ends_the_run_cleanly_and_rerun_completes_it(outage, monkeypatch, capsys):
    direct, options, src, dst, proxy = outage
    written = cut_after_outputs(monkeypatch, proxy, 3)
    config = RunSpec(src=src, dst=dst, model="bicubic", scale=2, batch_images=1, storage_failures=2,
                       storage_options=options)

    summary = run_local(config)  # returns: no exception escapes

    done = len(written)
    assert done in (3, 4) and summary["ok"] == done and summary["failed"] == IMAGES - done
    assert "still failing" in summary["storage_error"]
    assert summary["spooled"]["files"] == 2  # the rows and the run record
    errors = [f["error"] for f in summary["failures"]]
    assert {f["error_type"] for f in summary["failures"]} == {"StorageUnavailable"}
    not_attempted = sum("not attempted" in e for e in errors)
    # The circuit opened after 2 failures; the images already read or being written (the local
    # executor keeps up to 2 reading, 1 inferring and 3 writing) were still tried.
    assert not_attempted >= 1 and IMAGES - done - not_attempted <= 2 + 6
    dst_url = spool.dst_url(direct, dst[5:])
    assert sorted(spool.pending(dst_url)) == sorted([f"_runs/{summary['run_id']}.json",
                                                     f"run_id={summary['run_id']}/part-local-0-00000.parquet"])
    direct.invalidate_cache()
    assert not direct.exists(f"{dst[5:]}/_manifest")  # nothing reached DST's manifest

    proxy.down = False
    code = cli.main(["rerun", dst, "--executor", "local", "--json", "--no-progress",
                     *[f"--storage-option={k}={json.dumps(v) if isinstance(v, dict) else v}"
                       for k, v in options.items()]])
    rerun = json.loads(capsys.readouterr().out)

    assert code == 0 and rerun["ok"] == IMAGES - done and rerun["failed"] == 0
    assert spool.pending(dst_url) == []
    direct.invalidate_cache()
    rows = manifest.read_manifest(direct, dst[5:]).to_pylist()
    ok = Counter(r["image_id"] for r in rows if r["status"] == "ok")
    assert sorted(ok) == [f"img{i:02d}.png" for i in range(IMAGES)]  # nothing lost
    assert set(ok.values()) == {1}  # nothing duplicated
    assert len({r["run_id"] for r in rows}) == 2  # the spooled first run, then the rerun
    for i in range(IMAGES):
        out = Image.open(io.BytesIO(direct.cat_file(f"{dst[5:]}/img{i:02d}.png")))
        assert out.size == (40, 48)


def test_storage_down_from_the_start_is_a_clear_error_not_a_traceback(outage, capsys):
    direct, options, src, dst, proxy = outage
    proxy.cut()

    code = cli.main(["run", src, dst, "--executor", "local", "--model", "bicubic", "--no-progress",
                     *[f"--storage-option={k}={json.dumps(v) if isinstance(v, dict) else v}"
                       for k, v in options.items()]])

    err = capsys.readouterr().err
    assert code == cli.EXIT_STORAGE
    assert "storage unreachable" in err and "Traceback" not in err
    assert options["secret"] not in err


def test_a_finished_runs_leftover_plan_is_removed_by_the_next_run_but_a_running_ones_is_not(tmp_path):
    dst = tmp_path / "dst"
    for run_id in ("finished", "running"):
        (dst / "_plans" / run_id).mkdir(parents=True)
        (dst / "_plans" / run_id / "chunk-000000.parquet").write_bytes(b"plan")
    (dst / "_manifest" / "_runs").mkdir(parents=True)
    (dst / "_manifest" / "_runs" / "finished.json").write_text("{}")
    (tmp_path / "src").mkdir()

    run_local(RunSpec(src=str(tmp_path / "src"), dst=str(dst), model="bicubic"))

    assert sorted(p.name for p in (dst / "_plans").iterdir()) == ["running"]
