"""What the CLI says and returns when there is nothing to do, what `rerun` may change,
and what the progress bar shows: a scheduled job must be able to tell "nothing there"
from "all done", and a rerun must not quietly redo what quarantine keeps out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
RERUN = ["--executor", "local", "--no-progress"]
BASE = ["--model", "bicubic", *RERUN]


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# 1. nothing there

def test_run_empty_source_says_so_and_exits_0(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("not an image")
    status, _, err = _run(capsys, "run", src, tmp_path / "dst", *BASE)
    assert status == 0
    assert f"no images under {src} (after --include/--exclude)" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dst").exists()  # nothing written, no run record for a run of nothing


def test_run_empty_after_include_fails_with_fail_on_empty(tmp_path, capsys):
    _png(tmp_path / "src" / "a.png")
    status, _, err = _run(capsys, "run", tmp_path / "src", tmp_path / "dst", *BASE, "--include", "*.tif",
                          "--fail-on-empty")
    assert status == 6
    assert "no images under" in err and "(after --include/--exclude)" in err
    assert not (tmp_path / "dst").exists()


def test_runs_and_rerun_without_manifest_exit_6(tmp_path, capsys):
    dst = tmp_path / "typo"
    for command in (["runs", dst], ["rerun", dst, *RERUN], ["rerun", dst, "--dry-run"]):
        status, out, err = _run(capsys, *command)
        assert status == 6, command
        assert f"no manifest under {dst}: nothing was ever run there" in err
        assert len(err.strip().splitlines()) == 1


def test_rerun_nothing_to_redo_exits_0(tmp_path, capsys):
    _png(tmp_path / "src" / "a.png")
    assert _run(capsys, "run", tmp_path / "src", tmp_path / "dst", *BASE)[0] == 0
    status, _, err = _run(capsys, "rerun", tmp_path / "dst", *RERUN)
    assert status == 0
    assert "nothing to redo" in err


# 2. rerun: overrides, quarantine

def test_rerun_overrides_recorded_settings_and_says_which(tmp_path, capsys):
    _png(tmp_path / "src" / "a.png")
    dst = tmp_path / "dst"
    assert _run(capsys, "run", tmp_path / "src", dst, *BASE)[0] == 0
    (dst / "a.png").unlink()  # the output vanished: rerun redoes it, as TIFF at x2 this time
    status, out, err = _run(capsys, "rerun", dst, *RERUN, "--format", "tif", "--scale", "2", "--model", "bicubic",
                            "--json")
    assert status == 0, err
    assert "rerun: --format tiff instead of the recorded auto (the input's)" in err
    assert "rerun: --scale 2 instead of the recorded model's own" in err
    assert "--model" not in err  # given, but the same as recorded: not a change
    assert json.loads(out)["ok"] == 1
    with Image.open(dst / "a.tif") as image:
        assert image.size == (16, 16)


def test_rerun_overrides_reach_the_spec(tmp_path, capsys):
    from pipeline.ops.rerun import plan_rerun

    _png(tmp_path / "src" / "a.png")
    dst = tmp_path / "dst"
    assert _run(capsys, "run", tmp_path / "src", dst, *BASE, "--format", "jpeg")[0] == 0
    (dst / "a.jpg").unlink()
    (group,) = plan_rerun(str(dst), overrides={"format": "png", "quality": 80, "precision": "fp32", "tile": 0})
    assert (group.config.format, group.config.quality, group.config.precision, group.config.tile) == ("png", 80,
                                                                                                       "fp32", 0)
    assert group.changed["format"] == ("jpeg", "png") and group.config.force
    with pytest.raises(ValueError, match="cannot override"):
        plan_rerun(str(dst), overrides={"src": "elsewhere"})


def test_rerun_keeps_quarantined_images_out_unless_asked(tmp_path, capsys):
    _png(tmp_path / "src" / "a.png")
    (tmp_path / "src" / "bad.png").write_bytes(b"not a png at all")
    dst = tmp_path / "dst"
    for _ in range(2):  # two deterministic failures on the same bytes: quarantined
        assert _run(capsys, "run", tmp_path / "src", dst, *BASE)[0] == 3
    status, _, err = _run(capsys, "rerun", dst, *RERUN, "--json")
    assert status == 0, err
    assert "nothing to redo: 1 quarantined image(s) left out" in err
    status, out, err = _run(capsys, "rerun", dst, *RERUN, "--json", "--include-quarantined")
    assert status == 3 and json.loads(out)["failed"] == 1
    (tmp_path / "src" / "bad.png").write_bytes(b"other bytes, still no png")  # changed: tried again
    status, out, err = _run(capsys, "rerun", dst, *RERUN, "--json")
    assert status == 3 and json.loads(out)["failed"] == 1 and "quarantined" not in err


# 3. the progress bar

def test_progress_bar_shows_total_eta_rates_and_failures():
    import io
    from types import SimpleNamespace

    from pipeline.job.sink import _progress_bar

    stream = io.StringIO()
    update = _progress_bar(True, 3, file=stream)
    for failed in (0, 0, 1):
        update(SimpleNamespace(out_width=1000, out_height=1000), failed)
    update.close()
    text = stream.getvalue()
    assert "3/3" in text and "img/s" in text and "Mpx/s out" in text and "1 failed" in text
    assert "<00:00" in text  # the ETA, known from the total
    off = _progress_bar(False, 3)
    off(None, 0)
    off.close()


def test_run_with_progress_counts_to_the_number_of_images_to_do(tmp_path):
    for index in range(3):
        _png(tmp_path / "src" / f"{index}.png", seed=index)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", tmp_path / "src", tmp_path / "dst",
                           "--model", "bicubic", "--executor", "local", "--progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stderr and "img/s" in done.stderr and "0 failed" in done.stderr


def test_submit_to_an_address_where_no_job_server_answers_is_one_line_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", "--address", "http://127.0.0.1:1", "--",
                           str(tmp_path), str(tmp_path / "out"), "--model", "bicubic"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no Ray job server answers there" in done.stderr and "Traceback" not in done.stderr


def test_device_cuda_without_a_gpu_is_one_line_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / "a.png")
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "src"), str(tmp_path / "dst"),
                           "--model", "bicubic", "--device", "cuda", "--executor", "local"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "cuda" in done.stderr


def test_an_unknown_model_on_the_ray_executor_is_a_one_line_usage_error(tmp_path):
    """The model is loaded before Ray starts, so this costs no cluster start-up."""
    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / "a.png")
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "src"), str(tmp_path / "dst"),
                           "--model", "no-such-model"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "no-such-model" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
