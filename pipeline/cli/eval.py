"""`upscaler eval --hr DIR --scale N`: PSNR/SSIM on a benchmark set with the paper protocol."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK
from pipeline.cli.options import _positive_scale, add_engine_options


def add_parser(subparsers) -> argparse.ArgumentParser:
    ev = subparsers.add_parser("eval", help="PSNR/SSIM on a benchmark set with the paper protocol")
    ev.add_argument("--hr", required=True, help="folder of high-resolution images")
    ev.add_argument("-s", "--scale", type=_positive_scale, required=True,
                    help="upscaling factor, as `run` takes it (2, 3, 4, 2.5); without --model, the default model "
                         "for it, reaching the scale as `run` does (x3 from the x4 model)")
    ev.add_argument("--lr", default=None, help="folder of LR images (default: MATLAB bicubic of the HR)")
    add_engine_options(ev, scale=False)
    ev.add_argument("--json", action="store_true", help="print the scores as JSON")
    return ev


def command(args) -> int:
    from pipeline.models import default_model
    from pipeline.ops.evaluate import evaluate

    model = args.model or default_model(args.scale)
    result = evaluate(args.hr, args.scale, model, lr=args.lr,
                      device=args.device, precision=args.precision, tile=args.tile, overlap=args.overlap,
                      compile=args.compile)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for image in result["images"]:
            print(f"{image['image']:<24} PSNR {image['psnr']:6.2f} dB  SSIM {image['ssim']:.4f}")
        print(f"{'mean':<24} PSNR {result['mean']['psnr']:6.2f} dB  SSIM {result['mean']['ssim']:.4f}"
              f"  ({result['model']}, x{result['scale']:g}{_reached(result)}, {result['protocol']})")
    return EXIT_OK


def _reached(result: dict) -> str:
    """How the scale was reached when the model was trained at another one."""
    trained = result["model_scale"]
    return f" from the x{trained} model" if trained and trained != result["scale"] else ""
