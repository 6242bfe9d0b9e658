"""`upscaler eval --hr DIR --scale N`: PSNR/SSIM on a benchmark set with the paper protocol."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK
from pipeline.cli.options import add_engine_options


def add_parser(subparsers) -> argparse.ArgumentParser:
    ev = subparsers.add_parser("eval", help="PSNR/SSIM on a benchmark set with the paper protocol")
    ev.add_argument("--hr", required=True, help="folder of high-resolution images")
    ev.add_argument("--scale", type=int, required=True)
    ev.add_argument("--lr", default=None, help="folder of LR images (default: MATLAB bicubic of the HR)")
    add_engine_options(ev, scale=False)
    ev.add_argument("--json", action="store_true")
    return ev


def command(args) -> int:
    from pipeline.models import default_model
    from pipeline.ops.evaluate import evaluate

    result = evaluate(args.hr, args.scale, args.model or default_model(args.scale), lr=args.lr,
                      device=args.device, precision=args.precision, tile=args.tile, overlap=args.overlap)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for image in result["images"]:
            print(f"{image['image']:<24} PSNR {image['psnr']:6.2f} dB  SSIM {image['ssim']:.4f}")
        print(f"{'mean':<24} PSNR {result['mean']['psnr']:6.2f} dB  SSIM {result['mean']['ssim']:.4f}"
              f"  ({result['model']}, x{result['scale']}, {result['protocol']})")
    return EXIT_OK
