"""`upscaler eval --hr DIR --scale N`: PSNR/SSIM on a benchmark set with the paper protocol."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK
from pipeline.cli.options import _positive_scale, add_engine_options


def _protocol_scale(text: str) -> int:
    """A positive scale, read as `run` reads it, that is also a whole number: the protocol
    crops the HR to a multiple of the scale and shaves `scale` border pixels, which
    `pipeline.ops.evaluate` does in whole pixels (3.0 is 3; 2.5 is refused here, with
    what to use instead, rather than failing inside the evaluation)."""
    value = _positive_scale(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(
            f"eval needs a whole-number scale (the protocol crops HR images to a multiple of it), not {text}; "
            "for a fractional scale, `upscaler run SRC DST --scale S --reference HR_DIR` gives PSNR/SSIM per image")
    return int(value)


def add_parser(subparsers) -> argparse.ArgumentParser:
    ev = subparsers.add_parser("eval", help="PSNR/SSIM on a benchmark set with the paper protocol")
    ev.add_argument("--hr", required=True, help="folder of high-resolution images")
    ev.add_argument("-s", "--scale", type=_protocol_scale, required=True,
                    help="upscaling factor, a whole number (2, 3, 4; 3.0 is 3); the model, without --model, is the "
                         "bundled one trained at it")
    ev.add_argument("--lr", default=None, help="folder of LR images (default: MATLAB bicubic of the HR)")
    add_engine_options(ev, scale=False)
    ev.add_argument("--json", action="store_true", help="print the scores as JSON")
    return ev


def command(args) -> int:
    from pipeline.models import NAMED_MODELS, default_model
    from pipeline.ops.evaluate import evaluate

    model = args.model or default_model(args.scale)
    trained = NAMED_MODELS[model].scale if model in NAMED_MODELS else None
    if not args.model and trained and trained != args.scale:
        # `run` makes x3 from the x4 model; the protocol scores a model at its own scale only
        bundled = ", ".join(f"{n} (x{m.scale})" for n, m in NAMED_MODELS.items() if m.weights and m.scale)
        raise ValueError(f"no bundled model is trained at x{args.scale} (bundled: {bundled}); give --model: "
                         f"bicubic, lanczos, or weights trained at x{args.scale}")
    result = evaluate(args.hr, args.scale, model, lr=args.lr,
                      device=args.device, precision=args.precision, tile=args.tile, overlap=args.overlap)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for image in result["images"]:
            print(f"{image['image']:<24} PSNR {image['psnr']:6.2f} dB  SSIM {image['ssim']:.4f}")
        print(f"{'mean':<24} PSNR {result['mean']['psnr']:6.2f} dB  SSIM {result['mean']['ssim']:.4f}"
              f"  ({result['model']}, x{result['scale']}, {result['protocol']})")
    return EXIT_OK
