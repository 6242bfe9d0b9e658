"""Engine benchmark: how close `upscaler run --executor local` gets to the compute floor.

Same images, same EDSR-baseline x4 weights (16 blocks x 64 features; speed does
not depend on the weight values, so a seeded random init is used unless
--model names a bundled model or a weights file, at that model's scale) for three variants:

- floor_fp32, floor_bf16: read + decode + model forward on whole images, nothing else,
               in each precision (bf16 where the CPU or GPU computes in it natively);
- end_to_end:  `upscaler run --executor local` with its defaults (tiling,
               batching, encode, atomic write, lr_psnr, manifest);
- sequential:  the plain loop of Real-ESRGAN's inference script: one image at a
               time, fixed 64 px tiles with 10 px padding, hard-cropped, then written.

Each variant runs --repeat times, in alternating rounds, and the median counts: on a shared
machine single runs vary by 10% or more. Prints one JSON object. Images: the 24 Kodak photos (../shared) downscaled by the model's
scale (x4: 192x128 LR), or scikit-image's photographs when ../shared is absent.

    python benchmarks/engine.py [--images 24] [--repeat 3] [--device auto] [--model edsr-x2|PATH] [--compile]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import formats
from pipeline.models import LoadedModel, load_model, save_model
from pipeline.models.edsr.arch import EDSR
from pipeline.inference.engine import Upscaler, pick_device
from pipeline.job.local import run_local
from pipeline.spec import RunSpec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def lr_images(count: int, scale: int = 4) -> list[bytes]:
    kodak = sorted((SHARED / "data" / "kodak").glob("*.png"))
    if kodak:
        photos = [np.asarray(Image.open(p).convert("RGB")) for p in kodak[:count]]
    else:
        import skimage.data

        names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "cat"]
        photos = [getattr(skimage.data, n)() for n in (names * count)[:count]]
    files = []
    for pixels in photos:
        image = Image.fromarray(pixels)
        image = image.resize((image.width // scale, image.height // scale), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def edsr_baseline(weights: str | None) -> LoadedModel:
    if weights:
        return load_model(weights)
    torch.manual_seed(0)
    module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, scale=4)
    return LoadedModel(name="edsr-baseline-x4-random", arch="EDSR", module=module, scale=4, in_channels=3,
                       out_channels=3, overlap=16, params=sum(p.numel() for p in module.parameters()),
                       config={"num_feat": 64, "num_block": 16, "res_scale": 1.0, "scale": 4})


def to_tensor(pixels: np.ndarray, device, dtype=torch.float32) -> torch.Tensor:
    """The same memory format the engine uses (channels_last: faster on oneDNN and cuDNN)."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None].to(device)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def floor(files, module, device, dtype=torch.float32) -> float:
    module = module.to(dtype)
    started = time.perf_counter()
    with torch.inference_mode():
        for data in files:
            module(to_tensor(formats.decode_image(data).pixels, device, dtype))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def sequential(files, module, device, out_dir: Path, tile=64, pad=10, scale=4) -> float:
    """Real-ESRGAN's tile_process: pad each tile, infer it alone, paste the unpadded part."""
    started = time.perf_counter()
    with torch.inference_mode():
        for index, data in enumerate(files):
            x = to_tensor(formats.decode_image(data).pixels, device)
            _, c, h, w = x.shape
            out = torch.zeros(1, c, h * scale, w * scale, device=device)
            for ty in range(math.ceil(h / tile)):
                for tx in range(math.ceil(w / tile)):
                    y0, x0 = ty * tile, tx * tile
                    y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                    py0, px0, py1, px1 = max(y0 - pad, 0), max(x0 - pad, 0), min(y1 + pad, h), min(x1 + pad, w)
                    result = module(x[:, :, py0:py1, px0:px1])
                    oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                    out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = result[
                        :, :, oy : oy + (y1 - y0) * scale, ox : ox + (x1 - x0) * scale]
            pixels = (out[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            Image.fromarray(pixels).save(out_dir / f"{index}.png", compress_level=1)  # OpenCV's default, as Real-ESRGAN writes
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every variant; medians are reported")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", "--weights", dest="weights", default=None,
                        help="a bundled model's name or a weights file (default: EDSR-baseline x4, random init)")
    parser.add_argument("--compile", action="store_true",
                        help="also time `run --compile` (compile time included: each image shape compiles once)")
    args = parser.parse_args()
    device = pick_device(args.device)
    model = edsr_baseline(args.weights)
    files = lr_images(args.images, model.scale)
    module = model.module.eval().to(device, memory_format=torch.channels_last)
    pixels_in = sum(formats.decode_image(d).pixels.shape[0] * formats.decode_image(d).pixels.shape[1] for d in files)
    mp_out = pixels_in * model.scale**2 / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        for i, data in enumerate(files):
            (tmp / "src" / f"{i:03d}.png").write_bytes(data)
        weights = tmp / "edsr.safetensors"
        save_model(model, str(weights))
        runs: dict[str, list[float]] = {}
        for round_ in range(max(1, args.repeat)):
            for name, dtype in (("floor_fp32", torch.float32), ("floor_bf16", torch.bfloat16)):
                floor(files[:1], module, device, dtype)  # warm-up
                runs.setdefault(name, []).append(floor(files, module, device, dtype))
            module = module.to(torch.float32)
            (tmp / f"seq{round_}").mkdir()
            runs.setdefault("sequential", []).append(sequential(files, module, device, tmp / f"seq{round_}",
                                                                scale=model.scale))
            started = time.perf_counter()
            summary = run_local(RunSpec(src=str(tmp / "src"), dst=str(tmp / f"dst{round_}"), model=str(weights),
                                        device=str(device)))
            runs.setdefault("end_to_end", []).append(time.perf_counter() - started)
            assert summary["ok"] == len(files), summary
            if args.compile:
                started = time.perf_counter()
                summary = run_local(RunSpec(src=str(tmp / "src"), dst=str(tmp / f"dst-compiled{round_}"),
                                            model=str(weights), device=str(device), compile=True))
                runs.setdefault("end_to_end_compile", []).append(time.perf_counter() - started)
                assert summary["ok"] == len(files), summary
        precision = Upscaler(model, device=str(device)).precision  # what `auto` chose, as the run did
        results = {k: statistics.median(v) for k, v in runs.items()}

    report = {
        "benchmark": "engine",
        "model": (f"{model.arch} x{model.scale} {model.name} ({model.params} params)" if args.weights
                  else f"EDSR-baseline x4 ({model.params} params, seeded random init)"),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "images": len(files),
        "lr_size": list(formats.decode_image(files[0]).pixels.shape[:2]),
        "megapixels_out": round(mp_out, 3),
        "repeat": max(1, args.repeat),
        "seconds": {k: round(v, 3) for k, v in results.items()},  # medians
        "seconds_each_run": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "megapixels_out_per_second": {k: round(mp_out / v, 4) for k, v in results.items()},
        "end_to_end_precision": precision,
        "end_to_end_vs_floor_fp32_speed": round(results["floor_fp32"] / results["end_to_end"], 3),
        "end_to_end_vs_floor_bf16_speed": round(results["floor_bf16"] / results["end_to_end"], 3),
        "end_to_end_vs_sequential_speed": round(results["sequential"] / results["end_to_end"], 3),
        **({"end_to_end_compile_vs_floor_bf16_speed": round(results["floor_bf16"] / results["end_to_end_compile"], 3)}
           if "end_to_end_compile" in results else {}),
        "targets": {"end_to_end_vs_floor_bf16_speed": ">= 0.85", "end_to_end_vs_sequential_speed": ">= 1.5"},
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
