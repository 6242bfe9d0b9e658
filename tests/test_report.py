"""The HTML report: written under DST/_report, self-contained, and shown by a real headless browser."""

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    (root / "src").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "src" / f"img{i}.png")
    (root / "src" / "broken.png").write_bytes(b"<html>not an image</html>")
    assert main(["run", str(root / "src"), str(root / "dst"), "--model", "bicubic", "--scale", "2",
                 "--executor", "local"]) == 3
    assert main(["report", str(root / "dst")]) == 0
    (page,) = (root / "dst" / "_report").glob("*/index.html")
    return page


def test_report_has_summary_plots_failures_and_crops_with_no_network_references(report):
    text = report.read_text()
    assert "<svg" in text and "lr_psnr" in text and "seconds per output megapixel" in text
    assert "broken.png" in text and "ImageDecodeError" in text
    crops = re.findall(r'<img src="(crops/\d+\.png)"', text)
    assert len(crops) == 4 and all((report.parent / c).exists() for c in crops)
    assert not re.search(r'(src|href)="(https?:)?//', text)  # opens offline: no CDN, no remote asset
    assert re.search(r"<th>seconds</th><td>\d+\.\d</td>", text)  # rounded, not 11.136052


@pytest.mark.parametrize("seconds,shown", [(11.136052, "11.1"), (185.4, "3 min 05 s"), (7440, "2 h 04 min")])
def test_report_rounds_the_run_seconds_for_people(seconds, shown):
    from pipeline.ops.report import _seconds

    assert _seconds(seconds) == shown


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_report_loads_in_headless_chromium_without_console_errors_and_shows_its_images(report, tmp_path):
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--allow-file-access-from-files", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert 'data-images-total="4"' in dom and 'data-images-loaded="4"' in dom
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower() or "uncaught" in line.lower()], console
