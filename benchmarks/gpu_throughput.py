"""Engine throughput on a GPU (issue 14): EDSR-baseline x4 and SRVGGNetCompact x4 (seeded
random init: speed does not depend on the weights) through `Upscaler`, i.e. with the
engine's own tiling, batching, uploads and stitching, on 4 large LR images (2048 px) and
on 500 small ones (64 px), for each precision, with and without torch.compile.

Reports output megapixels per second, the model's useful TFLOP/s and its fraction of
the card's dense bf16 peak (--peak-tflops; H100/H200 SXM: 989), and the end-to-end time
against the model alone on the same images (`vs_model_only`). Prints one JSON object
(and each figure to stderr as it comes); `benchmarks/gpu_check.sh` runs it on a lent device.

    python benchmarks/gpu_throughput.py [--size 2048] [--images 4] [--small 500] [--out FILE]
    python benchmarks/gpu_throughput.py --device cpu --size 64 --images 1 --small 2 --compile off  # smoke test
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


def edsr_baseline() -> LoadedModel:
    torch.manual_seed(0)
    module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, scale=4)
    return LoadedModel(name="edsr-baseline-x4", arch="EDSR", module=module, scale=4, in_channels=3,
                       out_channels=3, overlap=16, config={"num_feat": 64, "num_block": 16, "scale": 4})


def srvgg_compact() -> LoadedModel:
    """Real-ESRGAN's SRVGGNetCompact x4 (realesr-general-x4v3's shape: 64 features, 32 convolutions),
    spandrel's implementation, seeded random weights."""
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    torch.manual_seed(0)
    module = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu")
    return LoadedModel(name="srvgg-compact-x4", arch="SRVGGNetCompact", module=module, scale=4, in_channels=3,
                       out_channels=3, overlap=8, config={"num_feat": 64, "num_conv": 32, "scale": 4})


MODELS = {"edsr-baseline-x4": edsr_baseline, "srvgg-compact-x4": srvgg_compact}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: LoadedModel, images, device, precision: str, compiled: bool, per_px: float, peak: float) -> dict:
    """End to end through `Upscaler` (uint8 in, uint8 out), and the model alone on the same
    images already on the device in the engine's dtype and layout (the 'model-only' rate)."""
    upscaler = Upscaler(model, device=str(device), precision=precision, compile=compiled)  # CUDA graphs too
    module = upscaler.module if upscaler._compiled is None else upscaler._compiled
    upscaler.upscale(images[:1])  # warm-up: cuDNN algorithm choice, allocator, compilation
    _sync(device)
    started = time.perf_counter()
    upscaler.upscale(images)
    _sync(device)
    seconds = time.perf_counter() - started
    dtype = upscaler.dtype
    tensors = [torch.from_numpy(i).permute(2, 0, 1)[None].to(device, dtype).div(255)
               .contiguous(memory_format=torch.channels_last) for i in images]
    with torch.inference_mode():
        module(tensors[0])
        _sync(device)
        started = time.perf_counter()
        for x in tensors:
            if compiled and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            module(x)
        _sync(device)
    model_seconds = time.perf_counter() - started
    lr_pixels = sum(i.shape[0] * i.shape[1] for i in images)
    flops = lr_pixels * per_px
    return {
        "seconds": round(seconds, 3), "model_only_seconds": round(model_seconds, 3),
        "megapixels_out_per_second": round(lr_pixels * model.scale**2 / 1e6 / seconds, 2),
        "model_tflops_per_second": round(flops / seconds / 1e12, 2),
        "fraction_of_bf16_peak": round(flops / seconds / 1e12 / peak, 4),
        "vs_model_only": round(model_seconds / seconds, 3),
        "tile": upscaler.auto_tile() if upscaler.requested_tile is None else upscaler.requested_tile,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048, help="side of the large LR images")
    parser.add_argument("--images", type=int, default=4, help="large images")
    parser.add_argument("--small", type=int, default=500, help="small images (64 px)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--compile", default="off,on", help="torch.compile variants: off, on, or both")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops for bf16 instead")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA device")
    rng = np.random.default_rng(0)
    large = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    small = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(args.small)]
    if args.profile:
        upscaler = Upscaler(edsr_baseline(), device=str(device), precision="bf16")
        upscaler.upscale(large[:1])
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            upscaler.upscale(large[:2])
            _sync(device)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))
        return
    results = {}
    for name in args.models.split(","):
        per_px = conv_flops_per_lr_pixel(MODELS[name]().module, 4)
        results[name] = {"gflop_per_lr_pixel": round(per_px / 1e9, 5)}
        for precision in args.precisions.split(","):
            for compiled in [c == "on" for c in args.compile.split(",")]:
                key = f"{precision}{'+compile' if compiled else ''}"
                for case, images in (("large", large), ("small", small)):
                    try:
                        results[name].setdefault(case, {})[key] = measure(
                            MODELS[name](), images, device, precision, compiled, per_px, args.peak_tflops)
                    except Exception as error:  # one variant failing (a compile error) leaves the others
                        results[name].setdefault(case, {})[key] = {"error": f"{type(error).__name__}: {error}"[:300]}
                    print(json.dumps({name: {case: {key: results[name][case][key]}}}), file=sys.stderr, flush=True)
    report = {"benchmark": "gpu_throughput", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "large": [args.images, args.size], "small": [args.small, 64],
              "targets": {"edsr large, best precision": ">= 0.30 of the bf16 peak (aim 0.40)",
                          "small images": ">= 0.8 of the model-only rate (vs_model_only)"},
              "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
