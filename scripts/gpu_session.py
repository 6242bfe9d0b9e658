"""One lent-GPU session, as a single command (device time is scarce: one start).

1. trains the bundled x4 model (configs/edsr-x4.toml) for as many steps as fit the
   time left, measured by a short probe run first, so the cosine schedule ends;
2. measures the engine on CUDA (benchmarks/gpu_throughput.py, benchmarks/engine.py).

Everything lands in $OUT (or --out), 7 files (the device tool returns at most 8):
session.json, train.log, x4/{model.safetensors, model.json, metrics.jsonl},
gpu_throughput.json, engine.json.
Training data: --data, a folder holding kodak/ and urban-train/: ../shared/data where
it is reachable; the lent machine cannot see it, so there a lossless WebP copy of those
two folders travelled in an ignored folder of the repository (`.traindata`, 47 MB,
pixel-identical to the PNGs), with imagecodecs' PNG codec beside it (`.icx`), which the
machine's Python lacks.

    python scripts/gpu_session.py --data .traindata --budget 560
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], log: Path, timeout: float) -> int:
    print(f"$ {' '.join(cmd)}  (timeout {timeout:.0f} s)", flush=True)
    with open(log, "ab") as f:
        try:
            return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=max(1, timeout)).returncode
        except subprocess.TimeoutExpired:
            f.write(b"\n[gpu_session] timed out\n")
            return 124


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=".traindata")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-session"))
    parser.add_argument("--budget", type=float, default=560, help="seconds this whole script may take")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--min-steps", type=int, default=1000)
    parser.add_argument("--bench-reserve", type=float, default=110, help="seconds kept for the benchmarks")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = {"python": sys.version}
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda, device=torch.cuda.get_device_name(),
                   capability=list(torch.cuda.get_device_capability()))
    except Exception as error:  # noqa: BLE001 - recorded, the rest still runs
        env["torch_error"] = repr(error)
    if shutil.which("nvidia-smi"):
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    (out / "session.json").write_text(json.dumps(env, indent=2))

    data = Path(args.data)
    common = [py, "jobs/train.py", "--config", "configs/edsr-x4.toml", "--no-ray", "--device", args.device,
              "--set", f'data.hr="{data / "kodak"}"', "--set", "train.progress=false"]
    log = out / "train.log"
    # Probe: speed per step does not depend on the data, so only the small folder is loaded.
    t0 = time.monotonic()
    sh(common + ["--out", "/tmp/probe", "--steps", str(args.probe_steps), "--set", "data.extra_hr=[]",
                 "--set", "train.log_every=100", "--set", "train.val_every=100000",
                 "--set", "train.ckpt_every=100000"], log, 120)
    records = [json.loads(line) for line in Path("/tmp/probe/metrics.jsonl").read_text().splitlines() if line]
    rate = records[-1]["images_per_s"] / 32  # steps/s, past cuDNN's warm-up
    probe_s = time.monotonic() - t0
    load_s = 40  # loading all 64 images (x4 MATLAB bicubic on the CPU): ~15 s on the 2-core dev VM
    train_s = deadline - time.monotonic() - args.bench_reserve - load_s - 20
    steps = max(args.min_steps, int(rate * train_s) // 500 * 500)
    plan = {"probe_seconds": round(probe_s, 1), "steps_per_second": round(rate, 2), "train_seconds": round(train_s),
            "steps": steps}
    env["plan"] = plan
    (out / "session.json").write_text(json.dumps(env, indent=2))
    print(plan, flush=True)

    code = sh(common + ["--out", "/tmp/x4", "--steps", str(steps),
                        "--set", f'data.extra_hr=["{data / "urban-train"}"]', "--set", "train.keep_checkpoints=1"],
              log, deadline - time.monotonic() - args.bench_reserve + 30)
    print(f"training exit {code}", flush=True)
    (out / "x4").mkdir(exist_ok=True)
    for name in ("model.safetensors", "model.json", "metrics.jsonl"):  # not the checkpoints: too big to fetch
        if Path("/tmp/x4", name).exists():
            shutil.copy(Path("/tmp/x4", name), out / "x4" / name)

    bench_log = log
    for name, cmd, limit in [
        ("gpu_throughput.json", [py, "benchmarks/gpu_throughput.py"], 55),
        ("engine.json", [py, "benchmarks/engine.py", "--device", "cuda"], 50),
    ]:
        left = deadline - time.monotonic() - 5
        if left < 15:
            break
        print(f"$ {' '.join(cmd)}", flush=True)
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=min(limit, left))
            (out / name).write_text(done.stdout)
            with open(bench_log, "a") as f:
                f.write(done.stderr[-4000:])
        except subprocess.TimeoutExpired:
            with open(bench_log, "a") as f:
                f.write(f"{name}: timed out\n")
    env["seconds"] = round(time.monotonic() - start, 1)
    (out / "session.json").write_text(json.dumps(env, indent=2))
    print(f"done in {env['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
