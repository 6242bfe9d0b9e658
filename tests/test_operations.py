"""Operations: plan and cost before a run, budgets, pilot runs, quarantine, run listing."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main


def png(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALER_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def archive(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"img{i}.png").write_bytes(png(100, 50, i))  # 0.005 Mpx in, 0.08 Mpx out at x4
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return src


def cli(capsys, *args) -> tuple[int, dict | None]:
    code = main([str(a) for a in args])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip().startswith("{") or out.strip().startswith("[") else None)


def test_plan_counts_megapixels_and_cost_from_a_default_throughput_when_uncalibrated(archive, tmp_path, capsys):
    code, plan = cli(capsys, "plan", archive, tmp_path / "dst", "--model", "bicubic", "--scale", "4",
                     "--gpu-hour-price", "3.6", "--json")
    assert code == EXIT_OK
    assert (plan["total"], plan["todo"], plan["done"], plan["failed"], plan["quarantined"]) == (5, 5, 0, 0, 0)
    assert plan["megapixels_in"] == pytest.approx(4 * 0.005) and plan["unknown_size"] == 1  # the corrupt one
    assert plan["megapixels_out"] == pytest.approx(4 * 0.08)
    assert plan["mpx_per_second"] == 0.5 and plan["throughput_source"].startswith("default for cpu")
    assert plan["estimated_device_seconds"] == pytest.approx(0.32 / 0.5)
    assert plan["estimated_cost"] == pytest.approx(0.64 / 3600 * 3.6, abs=1e-4)
    assert not (tmp_path / "dst").exists()  # plan runs nothing


def test_calibration_is_stored_and_used_by_plan(archive, tmp_path, capsys):
    code, calibration = cli(capsys, "calibrate", "--model", "bicubic", "--seconds", "0.3", "--json")
    assert code == EXIT_OK and calibration["mpx_per_second"] > 0
    _, plan = cli(capsys, "plan", archive, tmp_path / "dst", "--model", "bicubic", "--json")
    assert plan["mpx_per_second"] == calibration["mpx_per_second"]
    assert plan["throughput_source"].startswith("calibrated")


def test_max_cost_refuses_to_start_and_writes_nothing(archive, tmp_path, capsys):
    code = main(["run", str(archive), str(tmp_path / "dst"), "--model", "bicubic", "--executor", "local",
                 "--gpu-hour-price", "1000", "--max-cost", "0.01"])
    assert code == EXIT_USAGE and "exceeds --max-cost" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
    assert main(["run", str(archive), str(tmp_path / "dst"), "--model", "bicubic", "--executor", "local",
                 "--gpu-hour-price", "1", "--max-cost", "1"]) == EXIT_SOME_FAILED  # within budget: runs


def test_limit_and_sample_make_pilot_runs(archive, tmp_path, capsys):
    code, first = cli(capsys, "run", archive, tmp_path / "a", "--model", "bicubic", "--executor", "local",
                      "--limit", "2", "--json")
    assert first["ok"] + first["failed"] == 2
    code, sampled = cli(capsys, "run", archive, tmp_path / "b", "--model", "bicubic", "--executor", "local",
                        "--sample", "3", "--json")
    assert sampled["ok"] + sampled["failed"] == 3


def test_a_deterministic_failure_is_quarantined_after_two_runs(archive, tmp_path, capsys):
    run = ["run", archive, tmp_path / "dst", "--model", "bicubic", "--executor", "local", "--json"]
    for _ in range(2):
        code, summary = cli(capsys, *run)
        assert code == EXIT_SOME_FAILED and summary["failed"] == 1
    code, third = cli(capsys, *run)
    assert code == EXIT_OK and (third["failed"], third["quarantined"], third["skipped"]) == (0, 1, 4)
    _, plan = cli(capsys, "plan", archive, tmp_path / "dst", "--model", "bicubic", "--json")
    assert (plan["todo"], plan["done"], plan["quarantined"]) == (0, 4, 1)
    code, forced = cli(capsys, *run, "--include-quarantined")
    assert forced["failed"] == 1
    code, everything = cli(capsys, *run, "--force")  # --force redoes everything, the quarantined too
    assert (everything["ok"], everything["failed"], everything["quarantined"], everything["skipped"]) == (4, 1, 0, 0)
    (archive / "corrupt.png").write_bytes(png(10, 10))  # a new version of the file is tried again
    code, repaired = cli(capsys, *run)
    assert code == EXIT_OK and repaired["ok"] == 1


def test_runs_lists_every_run_with_counts_and_cost(archive, tmp_path, capsys):
    run = ["run", archive, tmp_path / "dst", "--model", "bicubic", "--executor", "local", "--json"]
    cli(capsys, *run)
    cli(capsys, *run)
    code, runs = cli(capsys, "runs", tmp_path / "dst", "--gpu-hour-price", "2", "--json")
    assert code == EXIT_OK and len(runs) == 2
    assert (runs[0]["ok"], runs[0]["failed"]) == (4, 1) or (runs[1]["ok"], runs[1]["failed"]) == (4, 1)
    first = next(r for r in runs if r["ok"] == 4)
    assert first["device_seconds"] > 0 and first["cost"] == pytest.approx(first["device_seconds"] / 3600 * 2, abs=1e-6)
    code, third = cli(capsys, *run, "--force", "--gpu-hour-price", "2")  # the run's own summary has its actual cost
    assert third["cost"] == pytest.approx(third["device_seconds"] / 3600 * 2, abs=1e-6) and third["device_seconds"] > 0
    assert first["megapixels_out"] == pytest.approx(4 * 0.08)
