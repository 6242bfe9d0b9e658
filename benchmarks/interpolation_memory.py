"""Interpolation memory benchmark: peak RSS and seconds of the MATLAB-compatible
bicubic on images whose dense weight matrices would not fit (a 1 x 65537 image
asked the old `resize_torch` for a 64 GiB matrix).

Cases, each in a subprocess of its own so every peak is its own:

- engine_8000x8000_x2: an 8000 x 8000 RGB uint8 image, x2, through `Upscaler`
  with the `bicubic` model (input 183 MiB, output 732 MiB; target: peak < 1.5 GiB);
- engine_1x65537_x2:   a 1 x 65537 RGB uint8 image, x2, through `Upscaler`;
- resize_torch_1x65537_x2 and imresize_1x65537_x2: the two resize functions
  directly, float64 (the torch one was the dense one).

`baseline_rss_mib` is the process after importing torch and building the input,
before resizing; `peak_rss_mib` is ru_maxrss at the end (it includes some
430 MiB of torch's shared-library pages); `peak_anon_mib` is sampled RssAnon,
the process's own memory; `working_mib` is that peak less the baseline and the
output array: what the resize itself holds. `cpu_seconds` (all threads) is
the figure to compare when the machine is shared. Prints one JSON object.

    python benchmarks/interpolation_memory.py [--case NAME]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time

CASES = ("engine_8000x8000_x2", "engine_1x65537_x2", "resize_torch_1x65537_x2", "imresize_1x65537_x2")
TARGET_PEAK_MIB = 1536


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _AnonPeak(threading.Thread):
    """Samples RssAnon every 2 ms: the process's own memory, without the
    file-backed pages of torch's shared libraries that ru_maxrss also counts."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, _status_mib("RssAnon"))
            time.sleep(0.002)


def run_case(name: str) -> dict:
    import numpy as np
    import torch

    from pipeline.inference.engine import Upscaler
    from pipeline.inference.resize import imresize, resize_torch
    from pipeline.models import load_model

    h, w = (8000, 8000) if "8000" in name else (1, 65537)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if name.startswith("engine"):
        upscaler = Upscaler(load_model("bicubic", scale=2), device="cpu")
        run = lambda: upscaler.upscale([image], 2)[0]  # noqa: E731
    elif name.startswith("resize_torch"):
        x = torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)[None]
        run = lambda: resize_torch(x, (2 * h, 2 * w))  # noqa: E731
    else:
        unit = image.astype(np.float64) / 255
        run = lambda: imresize(unit, output_size=(2 * h, 2 * w))  # noqa: E731
    baseline, baseline_anon = _rss_mib(), _status_mib("RssAnon")
    sampler = _AnonPeak()
    sampler.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    out = run()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    sampler.stop.set()
    sampler.join()
    peak = _rss_mib()
    output_mib = out.numel() * out.element_size() / 2**20 if hasattr(out, "numel") else out.nbytes / 2**20
    return {"input": f"{h}x{w}x3 uint8", "output": "x".join(map(str, out.shape)) + f" {out.dtype}",
            "output_mib": round(output_mib), "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "baseline_rss_mib": round(baseline), "peak_rss_mib": round(peak),
            "baseline_anon_mib": round(baseline_anon), "peak_anon_mib": round(max(sampler.peak, baseline_anon)),
            "working_mib": round(max(sampler.peak, baseline_anon) - baseline_anon - output_mib),
            "under_target": peak < TARGET_PEAK_MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print its JSON")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    import torch

    results = {}
    for name in CASES:
        done = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True)
        if done.returncode:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:], "returncode": done.returncode}
        else:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    report = {"benchmark": "interpolation_memory", "machine": platform.machine(), "cpus": torch.get_num_threads(),
              "torch": torch.__version__, "target_peak_rss_mib": TARGET_PEAK_MIB, "results": results}
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
