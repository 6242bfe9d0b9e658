"""Engine throughput per precision on a GPU: EDSR-baseline x4 (seeded random init:
speed does not depend on the weights) upscaling 1024x1024 LR images through
`Upscaler`, i.e. with the engine's own tiling, batching and pinned-memory copies.

Reports output megapixels per second for fp32 / fp16 / bf16, and the model's
useful FLOP/s as a fraction of the card's dense bf16 peak (given by --peak-tflops;
the H100/H200 SXM figure, 989, by default). Prints one JSON object.

    python benchmarks/gpu_throughput.py [--size 1024] [--images 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from pipeline.inference.engine import Upscaler
from pipeline.models import LoadedModel
from pipeline.models.edsr.arch import EDSR


def conv_flops_per_lr_pixel(module: torch.nn.Module, scale: int) -> float:
    """Multiply-adds x 2 of every convolution per LR input pixel (the upsampler's
    convolutions run at 1x, 2x... the LR resolution, counted by their input size)."""
    flops, probe = [], torch.zeros(1, 3, 16, 16)

    def hook(conv, inputs, output):
        _, _, h, w = output.shape
        k = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels // conv.groups
        flops.append(2 * k * conv.out_channels * h * w)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module(probe)
    for h in handles:
        h.remove()
    return sum(flops) / (16 * 16)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops for bf16 instead")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA device")
    torch.manual_seed(0)
    module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, scale=4)
    per_px = conv_flops_per_lr_pixel(module, 4)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    results = {}
    if args.profile:
        model = LoadedModel(name="edsr-baseline-x4", arch="EDSR", module=module, scale=4, in_channels=3,
                            out_channels=3, overlap=16, config={"num_feat": 64, "num_block": 16, "scale": 4})
        upscaler = Upscaler(model, device="cuda", precision="bf16")
        upscaler.upscale(images[:1])
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            upscaler.upscale(images[:2])
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
        return
    for precision in ("fp32", "fp16", "bf16"):
        model = LoadedModel(name="edsr-baseline-x4", arch="EDSR", module=module, scale=4, in_channels=3,
                            out_channels=3, overlap=16, config={"num_feat": 64, "num_block": 16, "scale": 4})
        upscaler = Upscaler(model, device="cuda", precision=precision)
        upscaler.upscale(images[:1])  # warm-up (cuDNN algorithm choice, allocator)
        torch.cuda.synchronize()
        started = time.perf_counter()
        upscaler.upscale(images)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        lr_pixels = args.images * args.size**2
        results[precision] = {
            "seconds": round(seconds, 3),
            "megapixels_out_per_second": round(lr_pixels * 16 / 1e6 / seconds, 2),
            "model_tflops_per_second": round(lr_pixels * per_px / seconds / 1e12, 1),
            "fraction_of_bf16_peak": round(lr_pixels * per_px / seconds / 1e12 / args.peak_tflops, 3),
            "tile": upscaler.auto_tile() if upscaler.requested_tile is None else upscaler.requested_tile,
        }
    report = {"benchmark": "gpu_throughput", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "model": "EDSR-baseline x4 (1.52 M params)",
              "images": args.images, "lr_size": [args.size, args.size],
              "gflop_per_lr_pixel": round(per_px / 1e9, 5), "results": results}
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
