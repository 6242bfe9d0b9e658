"""Single-strip TIFFs streamed window by window: peak memory is a window's rows, not the image.

tifffile and Pillow write an uncompressed image as one strip, so a 20000 x 20000 scan is
one 400 MB segment; formats/windows.py reads such a strip by rows (uncompressed: from
their byte offsets; deflate: inflated incrementally). This writes 20000 x 20000 uint8
single-strip TIFFs (uncompressed, deflate, deflate with predictor) to a temporary folder
and reads each in a fresh process with `WindowReader`, in the order and window sizes of
stages/stream.py (`window_grid`, plus a margin on every side), checking every window
against the known content. Prints one JSON object; the target is a peak RSS under 1.5 GiB.

    python benchmarks/single_strip.py [--side 20000] [--scale 2] [--margin 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

VARIANTS = {"uncompressed": {}, "deflate": {"compression": "zlib"},
            "deflate+predictor": {"compression": "zlib", "predictor": True}}


def content(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """[y0:y1, x0:x1] of the test image: a texture that compresses like a photo, cheap to recompute."""
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.uint32)
    return ((xx * 7 + yy * 3 + (xx * yy >> 9)) & 0xFF).astype(np.uint8)


def write(path: str, side: int, options: dict) -> None:
    import tifffile

    image = np.empty((side, side), np.uint8)
    for y in range(0, side, 1024):  # in blocks: the uint32 arithmetic of the whole image would be 3 GiB
        image[y : y + 1024] = content(y, min(side, y + 1024), 0, side)
    tifffile.imwrite(path, image, rowsperstrip=side, photometric="minisblack",
                     metadata=None, **options)


def peak_rss() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10


def measure(path: str, tile_in: int, window_w: int, margin: int) -> dict:
    """Runs in a fresh process that imports only the reader (stages/stream.py would bring
    torch, some 700 MiB, which is not the reader's): read every window as stream.py does."""
    import tifffile

    from pipeline.formats import windows

    rss_before = peak_rss()
    started = time.perf_counter()
    mismatches = count = 0
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert len(page.dataoffsets) == 1, "not a single strip"
        h, w = page.imagelength, page.imagewidth
        reader = windows.WindowReader(page)
        for cy0 in range(0, h, tile_in):
            cy1 = min(h, cy0 + tile_in)
            wy0, wy1 = max(0, cy0 - margin), min(h, cy1 + margin)
            for cx0 in range(0, w, window_w):
                cx1 = min(w, cx0 + window_w)
                wx0, wx1 = max(0, cx0 - margin), min(w, cx1 + margin)
                window = reader.read(wy0, wy1, wx0, wx1)
                mismatches += not np.array_equal(window[..., 0], content(wy0, wy1, wx0, wx1))
                count += 1
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(peak_rss() / 2**20, 1),
        "rss_before_reading_mib": round(rss_before / 2**20, 1),
        "windows": count, "window": [tile_in + 2 * margin, window_w + 2 * margin],
        "mismatched_windows": mismatches,
        "band_rows": reader.band_rows, "rows_decoded": reader.rows_decoded, "restarts": reader.restarts,
        "peak_cached_mib": round(reader.peak_cached / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20_000)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--margin", type=int, default=16, help="input pixels around each window (stream.py: "
                        "half the model's overlap, at least 8, per pass)")
    parser.add_argument("--measure", nargs=2, type=int, help=argparse.SUPPRESS)  # tile_in, window_w
    parser.add_argument("path", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.path, *args.measure, args.margin)))
        return
    from pipeline.stages.stream import window_grid

    tile_in, window_w = window_grid(args.side, args.side, args.scale)
    results = {"side": args.side, "dtype": "uint8", "scale": args.scale, "target_peak_rss_mib": 1536,
               "window_grid": [tile_in, window_w], "margin": args.margin}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in VARIANTS.items():
            path = os.path.join(tmp, f"{name}.tif")
            started = time.perf_counter()
            write(path, args.side, options)
            written = time.perf_counter() - started
            child = subprocess.run(
                [sys.executable, __file__, "--measure", str(tile_in), str(window_w), "--margin", str(args.margin),
                 path],
                capture_output=True, text=True, check=True,
                env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))},
            )
            result = json.loads(child.stdout.strip().splitlines()[-1])
            result.update(file_mib=round(os.path.getsize(path) / 2**20, 1), seconds_to_write=round(written, 1))
            results[name] = result
            os.unlink(path)
    results["within_target"] = all(results[n]["peak_rss_mib"] < 1536 and not results[n]["mismatched_windows"]
                                   for n in VARIANTS)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
