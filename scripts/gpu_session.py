"""One lent-GPU session, as a single command (device time is scarce: one start).

1. trains a plan's stages in order, each initialised from the one before where the
   plan says so, each for as many steps as its share of the time allows, measured by a
   short probe first, so every cosine schedule ends; exports each (fp16, deployed
   layout) and copies its metrics;
2. scores them (benchmarks/quality.py on the device) and measures the engine on CUDA
   (benchmarks/gpu_throughput.py, benchmarks/engine.py).

Plans: `span` (issue 16: SPAN x2 in the paper's form, SPAN x4 from its body, the GAN
photo model from the x4 one) and `edsr-x4` (how the bundled edsr-x4 was trained).
Everything lands in $OUT (or --out): session.json, train.log, STAGE.safetensors/.json,
STAGE.metrics.jsonl, quality.json, gpu_throughput.json, engine.json.
Training data: --data, a folder holding kodak/, urban-train/, train-extra/ and
bench/set5, bench/set14 (../shared/data where it is reachable; the lent machine cannot
see it, so a lossless WebP copy travels in the ignored `.traindata`, made by
`python jobs/pack_train_data.py`: see its docstring and the README).

    python scripts/gpu_session.py --plan span --data .traindata --budget 560
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

# stage name -> (config, stage it starts from, share of the training time, extra --set overrides)
PLANS = {
    "span": [
        ("span-x2", "span-x2", None, 0.3, ["model.options={num_feat = 48, num_block = 6, gain = 2}",
                                           "data.batch_size=32"]),
        ("span-x4", "span-x4", "span-x2", 0.5, []),
        ("span-x4-gan", "span-x4-gan", "span-x4", 0.2, []),
    ],
    "edsr-x4": [("edsr-x4", "edsr-x4", None, 0.68, ["data.extra_hr=[\"{data}/urban-train\"]"]),
                ("edsr-x4-finetune", "edsr-x4-finetune", "edsr-x4", 0.32, ["data.extra_hr=[\"{data}/urban-train\"]"])],
}


def sh(cmd: list[str], log: Path, timeout: float) -> int:
    print(f"$ {' '.join(cmd)}  (timeout {timeout:.0f} s)", flush=True)
    with open(log, "ab") as f:
        try:
            return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=max(1, timeout)).returncode
        except subprocess.TimeoutExpired:
            f.write(b"\n[gpu_session] timed out\n")
            return 124


def environment(out: Path) -> dict:
    env = {"python": sys.version}
    try:
        import torch

        env.update(torch=torch.__version__, cuda=torch.version.cuda, device=torch.cuda.get_device_name(),
                   capability=list(torch.cuda.get_device_capability()))
    except Exception as error:  # noqa: BLE001 - recorded, the rest still runs
        env["torch_error"] = repr(error)
    if shutil.which("nvidia-smi"):
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    return env


def data_overrides(data: Path) -> list[str]:
    return ["--set", f'data.hr="{data / "kodak"}"',
            "--set", f'data.extra_hr=["{data / "urban-train"}", "{data / "train-extra"}"]',
            "--set", f'data.benchmark_hr=["{data / "bench" / "set5"}", "{data / "bench" / "set14"}"]']


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", choices=sorted(PLANS), default="span")
    parser.add_argument("--data", default=".traindata")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu-session"))
    parser.add_argument("--budget", type=float, default=560, help="seconds this whole script may take")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--probe-steps", type=int, default=200)
    parser.add_argument("--min-steps", type=int, default=500)
    parser.add_argument("--bench-reserve", type=float, default=120, help="seconds kept for scoring and benchmarks")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget
    out, data, py = Path(args.out), Path(args.data), sys.executable
    out.mkdir(parents=True, exist_ok=True)
    env = environment(out)
    (out / "session.json").write_text(json.dumps(env, indent=2))
    log = out / "train.log"
    stages = PLANS[args.plan]
    # Probe each stage on the small folder (speed per step does not depend on the data).
    rates = {}
    for name, config, _, _, sets in stages:
        overrides = [a for s in sets for a in ("--set", s.replace("{data}", str(data)))]
        probe = Path("/tmp/probe") / name
        sh([py, "jobs/train.py", "--config", f"configs/{config}.toml", "--no-ray", "--device", args.device,
            "--out", str(probe), "--steps", str(args.probe_steps), *data_overrides(data), *overrides,
            "--set", "data.extra_hr=[]", "--set", "train.progress=false", "--set", "train.log_every=50",
            "--set", "train.val_every=100000", "--set", "train.ckpt_every=100000"], log, 90)
        metrics = probe / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line] if metrics.exists() else []
        batch = json.loads((probe / "config.json").read_text())["data"]["batch_size"] if records else 1
        rates[name] = records[-1]["images_per_s"] / batch if records else 0.0  # steps/s; 0: the probe failed
    load_s = 40 * len(stages)  # decoding + MATLAB-bicubic LR of ~600 images per stage, on the CPU
    train_s = deadline - time.monotonic() - args.bench_reserve - load_s
    plan = {name: {"steps_per_second": round(rates[name], 2),
                   "steps": max(args.min_steps, int(rates[name] * train_s * share) // 500 * 500)}
            for name, _, _, share, _ in stages}
    env["plan"] = plan
    (out / "session.json").write_text(json.dumps(env, indent=2))
    print(plan, flush=True)

    for index, (name, config, init, share, sets) in enumerate(stages):
        overrides = [a for s in sets for a in ("--set", s.replace("{data}", str(data)))]
        if init:
            overrides += ["--set", f'model.init_from="/tmp/train/{init}/model.safetensors"']
        later = sum(s for *_, s, _ in stages[index + 1:])
        limit = deadline - time.monotonic() - args.bench_reserve - later * train_s
        code = sh([py, "jobs/train.py", "--config", f"configs/{config}.toml", "--no-ray", "--device", args.device,
                   "--out", f"/tmp/train/{name}", "--steps", str(plan[name]["steps"]), *data_overrides(data),
                   *overrides, "--set", "train.progress=false", "--set", "train.keep_checkpoints=1"], log, limit)
        plan[name]["exit"] = code
        run = Path("/tmp/train") / name
        if (run / "model.safetensors").exists():
            sh([py, "-m", "pipeline.train.export", str(run / "model.safetensors"), str(out / f"{name}.safetensors"),
                "--fp16", "--deploy"], log, 60)
            shutil.copy(run / "metrics.jsonl", out / f"{name}.metrics.jsonl")

    shipped = [str(p) for p in sorted(out.glob("*.safetensors"))]
    for name, cmd, limit in [
        ("quality.json", [py, "benchmarks/quality.py", "--device", args.device, "--sets", str(data / "bench"),
                          "--json", str(out / "quality.json"), "--models", *shipped, "edsr-x4", "edsr-x2"], 60),
        ("gpu_throughput.json", [py, "benchmarks/gpu_throughput.py"], 55),
        ("engine.json", [py, "benchmarks/engine.py", "--device", "cuda", "--repeat", "1"], 50),
    ]:
        left = deadline - time.monotonic() - 5
        if left < 15:
            break
        print(f"$ {' '.join(cmd)}", flush=True)
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=min(limit, left))
            if name != "quality.json":
                (out / name).write_text(done.stdout)
            with open(log, "a") as f:
                f.write(done.stdout[-2000:] if name == "quality.json" else "")
                f.write(done.stderr[-4000:])
        except subprocess.TimeoutExpired:
            with open(log, "a") as f:
                f.write(f"{name}: timed out\n")
    env["seconds"] = round(time.monotonic() - start, 1)
    (out / "session.json").write_text(json.dumps(env, indent=2))
    print(f"done in {env['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
