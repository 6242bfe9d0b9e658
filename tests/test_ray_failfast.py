"""The Ray executor never hangs: actors that cannot be placed are refused with the numbers,
an address where nothing listens is refused at once, and a run that makes no progress ends
after --stall-timeout with its rows and record written (a real local Ray, 2 CPUs, no GPU)."""

import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.job.ray import RayOptions, run_ray
from pipeline.spec import RunSpec

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def photos(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buffer, format="PNG")
        (src / f"{i}.png").write_bytes(buffer.getvalue())
    return src


def spec(photos, tmp_path) -> RunSpec:
    return RunSpec(src=str(photos), dst=str(tmp_path / "dst"), model="bicubic", scale=2)


def test_gpu_workers_on_a_cluster_without_gpus_are_refused_at_once(photos, tmp_path):
    started = time.monotonic()
    with pytest.raises(ValueError, match="the cluster has no GPU"):
        run_ray(spec(photos, tmp_path), RayOptions(gpus_per_worker=1))
    assert time.monotonic() - started < 30 and not (tmp_path / "dst").exists()


def test_workers_that_no_node_can_hold_are_refused_with_the_numbers(photos, tmp_path):
    with pytest.raises(ValueError, match=r"1 worker\(s\) of 4 CPU and 0 GPU each do not fit.*2 CPU/0 GPU"):
        run_ray(spec(photos, tmp_path), RayOptions(workers=1, cpus_per_worker=4))


def test_an_address_where_nothing_listens_is_a_usage_error_within_seconds(photos, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(photos), str(tmp_path / "dst"),
                           "--model", "bicubic", "--address", "127.0.0.1:1"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    assert "nothing answers there" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30


def test_a_run_that_makes_no_progress_ends_after_the_stall_timeout_with_its_record(photos, tmp_path, capsys):
    """Every CPU is taken by another job's task: the actors wait, and the watchdog ends the run
    (exit 5, saying what Ray waits for)."""

    @ray.remote(num_cpus=2)
    def hold(seconds):
        time.sleep(seconds)

    holder = hold.remote(120)
    time.sleep(2)  # the holder runs
    try:
        started = time.monotonic()
        code = main(["run", str(photos), str(tmp_path / "dst"), "--model", "bicubic", "--workers", "1",
                     "--cpus-per-worker", "1", "--stall-timeout", "5", "--no-progress"])
        assert time.monotonic() - started < 60
        err = capsys.readouterr().err
        assert code == 5 and "no image finished for 5 s (--stall-timeout)" in err and "0 CPU" in err
    finally:
        ray.cancel(holder, force=True)
    (record,) = (tmp_path / "dst" / "_manifest" / "_runs").glob("*.json")
    assert json.loads(record.read_text())["interrupted"].startswith("error: StalledError")
    assert not (tmp_path / "dst" / "_plans").exists()


def test_the_stderr_filter_drops_only_the_marked_lines_and_passes_the_rest_as_it_comes(capfd):
    from pipeline.job.ray import _without_lines

    with _without_lines(b"NOISE"):
        os.write(2, b"[2026 E core_worker.cc] Actor has NOISE in it\nkept line\n")
        os.write(2, b"\r 3/10 images")  # a progress bar's update, no newline
        os.write(2, b"\r 4/10 images\n[2026 E] more NOISE\n[2026 W] a real warning\n")
    assert capfd.readouterr().err == "kept line\n\r 3/10 images\r 4/10 images\n[2026 W] a real warning\n"


def test_a_ray_run_from_the_command_line_prints_only_our_summary(photos, tmp_path):
    """Ray Data's spurious 'constructor arguments in the object store' error line (ray#57733)
    and Ray's start-up chatter stay off the console; the summary is on stdout."""
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(photos), str(tmp_path / "dst"),
                           "--model", "bicubic", "--scale", "2", "--executor", "ray"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "ok                   3" in done.stdout
