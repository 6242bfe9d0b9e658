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
