"""The `upscaler` command as people type it: global options after the subcommand, typos,
Real-ESRGAN's aliases, defaults in the help, eval's scale, a single file as the
destination, and the text summary. Runs go through `python -m pipeline.cli` (a fresh
interpreter, real stderr), on 8x8 images with the bicubic model and the local executor."""

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import formats
from pipeline.cli import EXIT_OK, EXIT_USAGE, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
FAST = ("--model", "bicubic", "--executor", "local", "--no-progress")


def upscaler(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def png(h=8, w=8, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "one.png").write_bytes(png(seed=1))
    (folder / "two.png").write_bytes(png(seed=2))
    return folder


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


# 1. global options -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["-v", "run", "a", "b"], ["run", "a", "b", "-v"], ["run", "-v", "a", "b"],
                                  ["--verbose", "models"], ["models", "--verbose"], ["train", "-v"]])
def test_verbose_is_taken_before_or_after_the_subcommand(argv):
    assert build_parser().parse_args(argv).verbose is True


def test_without_verbose_anywhere_it_is_off_for_every_subcommand():
    for name in ("run", "plan", "models", "train"):
        argv = [name, "a", "b"] if name in ("run", "plan") else [name]
        assert build_parser().parse_args(argv).verbose is False


def test_a_run_takes_verbose_after_its_arguments(src, tmp_path):
    done = upscaler("run", src, tmp_path / "dst", *FAST, "-v")
    assert done.returncode == EXIT_OK, done.stderr
    assert (tmp_path / "dst" / "one.png").is_file()


# 2. typos ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,meant", [(["run", "a", "b", "--scael", "2"], "--scale"),
                                        (["plan", "a", "b", "--tiel=64"], "--tile"),
                                        (["run", "a", "b", "--exeuctor", "local"], "--executor"),
                                        (["rnu", "a", "b"], "'run'")])
def test_a_typo_shows_the_subcommands_usage_and_the_closest_name(argv, meant):
    done = upscaler(*argv)
    assert done.returncode == EXIT_USAGE
    assert f"did you mean {meant}?" in done.stderr
    if argv[0] != "rnu":
        assert f"usage: upscaler {argv[0]} " in done.stderr  # the subcommand's usage, not the top level's


def test_an_option_nothing_resembles_gets_no_guess(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "a", "b", "--zzzzzz"])
    assert exit_info.value.code == EXIT_USAGE
    error = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz" in error and "did you mean" not in error


# 3. Real-ESRGAN's habits -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "plan"])
def test_real_esrgan_aliases_parse_as_the_long_options(command):
    parse = build_parser().parse_args
    short = parse([command, "a", "b", "-n", "bicubic", "-s", "2.5", "-t", "64", "--fp32", "--ext", "jpg"])
    long = parse([command, "a", "b", "--model", "bicubic", "--scale", "2.5", "--tile", "64", "--precision", "fp32",
                  "--format", "jpeg"])
    assert vars(short) == vars(long)
    assert parse([command, "a", "b", "-m", "x"]).model == "x"
    assert parse([command, "a", "b", "--format", "TIF"]).format == "tiff"
    assert parse([command, "a", "b", "--ext", "auto"]).format is None


def test_short_options_are_one_option_each():
    """An alias must not shadow another option: every short option of run and plan is the
    one meant (argparse would refuse a duplicate, but not a short option meaning something else)."""
    expected = {"-h": "help", "-v": "verbose", "-m": "model", "-n": "model", "-s": "scale", "-t": "tile"}
    for name in ("run", "plan"):
        shorts = {s: a.dest for s, a in subcommands()[name]._option_string_actions.items() if not s.startswith("--")}
        assert shorts == expected


def test_format_spellings_share_one_resume_key(src, tmp_path):
    """--format jpg, then --format jpeg: the second run redoes nothing (the spelling is
    normalised before the RunSpec, so the config key is the same)."""
    first = upscaler("run", src, tmp_path / "dst", *FAST, "-s", "2", "--ext", "jpg", "--json")
    assert first.returncode == EXIT_OK, first.stderr
    assert json.loads(first.stdout)["ok"] == 2
    assert formats.decode_image((tmp_path / "dst" / "one.jpg").read_bytes()).pixels.shape == (16, 16, 3)
    again = upscaler("run", src, tmp_path / "dst", *FAST, "-s", "2", "--format", "jpeg", "--json")
    summary = json.loads(again.stdout)
    assert (summary["ok"], summary["skipped"]) == (0, 2)
    record = json.loads(next((tmp_path / "dst" / "_manifest" / "_runs").glob("*.json")).read_text())
    assert record["config"]["format"] == "jpeg"


# 4. defaults in the help ------------------------------------------------------------------


def test_every_option_says_its_default():
    """The rule: every option that takes a value and is not required says "default" in its
    help (after %(default)s is expanded); flags (store_true, store_const, --x/--no-x) need not."""
    missing = []
    for name, parser in subcommands().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue
            help_text = formatter._expand_help(action) if action.help else ""
            if "default" not in help_text.lower():
                missing.append(f"{name} {'/'.join(action.option_strings)}")
    assert missing == []


def test_the_max_pixels_default_in_the_help_is_the_real_one():
    help_text = subcommands()["run"].format_help()
    assert str(formats.DEFAULT_MAX_PIXELS) in help_text


def test_help_stays_readable_in_80_columns():
    top = upscaler("--help", COLUMNS="80")
    assert top.returncode == EXIT_OK
    for name in subcommands():
        assert re.search(rf"^\s+{name}\s", top.stdout, re.M), name
    run = upscaler("run", "--help", COLUMNS="80")
    assert run.returncode == EXIT_OK
    assert "-m, -n, --model MODEL" in run.stdout and "-s, --scale SCALE" in run.stdout  # aliases on one line
    assert max(map(len, top.stdout.splitlines() + run.stdout.splitlines())) <= 80


# 5. eval's scale ---------------------------------------------------------------------------


@pytest.fixture
def hr(tmp_path):
    folder = tmp_path / "hr"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(24, 24, seed=3))
    return folder


def test_eval_takes_a_fractional_scale_like_run_with_the_hr_cropped_to_whole_lr_pixels(hr, capsys):
    assert main(["eval", "--hr", str(hr), "--scale", "2.5", "--model", "bicubic", "--json"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["scale"] == 2.5 and result["protocol"].startswith("Y channel, shave=3")
    assert len(result["images"]) == 1 and 10 < result["mean"]["psnr"] < 99


def test_eval_takes_three_and_three_point_zero(hr, capsys):
    for scale in ("3", "3.0"):
        assert main(["eval", "--hr", str(hr), "--scale", scale, "--model", "bicubic", "--json"]) == EXIT_OK
        result = json.loads(capsys.readouterr().out)
        assert result["scale"] == 3 and len(result["images"]) == 1 and result["mean"]["psnr"] > 0


def test_eval_without_model_uses_the_bundled_model_trained_at_the_scale(hr, capsys):
    assert main(["eval", "--hr", str(hr), "-s", "2", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["model"] == "edsr-x2"


def test_eval_without_model_at_a_scale_no_bundled_model_has_reaches_it_from_the_default_model(hr):
    done = upscaler("eval", "--hr", hr, "--scale", "3")
    assert done.returncode == EXIT_OK, done.stderr
    assert "(edsr-x4, x3 from the x4 model," in done.stdout


# 6. a single file as the destination -------------------------------------------------------


@pytest.fixture
def photo(tmp_path):
    (tmp_path / "a").mkdir()
    Image.open(io.BytesIO(png(seed=4))).save(tmp_path / "a" / "photo.jpg", quality=95)
    return tmp_path / "a" / "photo.jpg"


def test_a_destination_with_an_image_extension_is_the_output_file(photo, tmp_path):
    """`run a/photo.jpg b/photo.png`: b/photo.png is a PNG file (the extension implies
    --format png), not a folder, and the manifest goes beside it, in b/_manifest."""
    done = upscaler("run", photo, tmp_path / "b" / "photo.png", *FAST, "-s", "2")
    assert done.returncode == EXIT_OK, done.stderr
    out = tmp_path / "b" / "photo.png"
    assert out.is_file() and out.read_bytes().startswith(b"\x89PNG")
    assert formats.decode_image(out.read_bytes()).pixels.shape == (16, 16, 3)
    (row,) = pq.read_table(tmp_path / "b" / "_manifest").to_pylist()
    assert row["dst_uri"].endswith("b/photo.png") and row["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["_manifest", "photo.png"]


def test_a_file_destination_of_another_name_is_refused_with_the_name_to_use(photo, tmp_path):
    done = upscaler("run", photo, tmp_path / "b" / "out.png", *FAST)
    assert done.returncode == EXIT_USAGE
    assert str(tmp_path / "b" / "photo.png") in done.stderr  # what to give instead
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("dst,message", [("a/photo.jpg", "same file"), ("b/photo.png --format webp", "disagrees"),
                                         ("b/photo.gif", "not an output format")])
def test_file_destinations_that_cannot_be_written_are_usage_errors(photo, tmp_path, capsys, dst, message):
    first, *rest = dst.split()
    assert main(["run", str(photo), str(tmp_path / first), *rest, *FAST]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and photo.stat().st_size > 0


def test_a_folder_source_keeps_a_destination_named_like_a_file_a_folder(src, tmp_path):
    assert main(["run", str(src), str(tmp_path / "out.png"), *FAST]) == EXIT_OK
    assert (tmp_path / "out.png" / "one.png").is_file()


# 7. the text summary ----------------------------------------------------------------------


def test_the_text_summary_rounds_and_counts_quarantined_images(src, tmp_path, capsys):
    (src / "broken.png").write_bytes(b"not a png")
    dst = tmp_path / "dst"
    for _ in range(2):  # the same deterministic failure twice: quarantined from the third run on
        main(["run", str(src), str(dst), *FAST, "--json"])
    capsys.readouterr()
    done = upscaler("run", src, dst, *FAST, "--gpu-hour-price", "2.5")
    assert done.returncode == EXIT_OK, done.stderr
    rows = dict(re.findall(r"^(\S+(?: \S+)*?)\s{2,}(.*)$", done.stdout, re.M))
    assert (rows["ok"], rows["failed"], rows["skipped"], rows["quarantined"]) == ("0", "0", "2", "1")
    assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d", rows["megapixels in / out"])
    assert re.fullmatch(r"\d+\.\d \(\d+\.\d\d Mpx/s out; \d+\.\d device-s\)", rows["seconds"])
    assert re.fullmatch(r"\d+\.\d{4} USD", rows["cost"])
