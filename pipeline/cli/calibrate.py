"""`upscaler calibrate`: measure a model's megapixels/s on this device, for `plan`."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    cal = subparsers.add_parser("calibrate", help="measure a model's megapixels/s on this device for `plan`")
    cal.add_argument("-m", "-n", "--model", default=None,
                     help="named model, local path or fsspec URL (default: the bundled x4 model)")
    cal.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    cal.add_argument("-t", "--tile", type=int, default=None,
                     help="measure this tile only (default: time candidate tiles, and batch sizes on CUDA, and store "
                          "the fastest: `run` uses it when its tile is automatic)")
    cal.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                     help="default: auto, as `run` picks it (bf16 on CPUs with native bf16, else fp32; "
                          "bf16 or fp16 on CUDA)")
    cal.add_argument("--compile", action="store_true", help="measure with torch.compile, as `run --compile`")
    cal.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="same as --precision fp32")
    cal.add_argument("--seconds", type=float, default=10.0, help="how long to measure (default: %(default)s)")
    cal.add_argument("--json", action="store_true", help="print the result as JSON")
    return cal


def command(args) -> int:
    from pipeline.models import default_model
    from pipeline.ops.plan import calibrate

    result = calibrate(args.model or default_model(None), device=args.device, tile=args.tile,
                       precision=args.precision, seconds=args.seconds, compile=args.compile)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        tuned = (f"; fastest tile {result['best_tile']}" if result.get("best_tile") else "") + \
            (f", batch {result['best_batch']}" if result.get("best_batch") else "")
        print(f"{result['model']} on {result['device']}: {result['mpx_per_second']} output Mpx/s "
              f"(tile {result['tile']}, {result['precision']}{tuned}); stored in {result['cache']}")
    return EXIT_OK
