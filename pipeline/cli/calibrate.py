"""`upscaler calibrate`: measure a model's megapixels/s on this device, for `plan`."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    cal = subparsers.add_parser("calibrate", help="measure a model's megapixels/s on this device for `plan`")
    cal.add_argument("--model", default=None)
    cal.add_argument("--device", default="auto")
    cal.add_argument("--tile", type=int, default=None)
    cal.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    cal.add_argument("--seconds", type=float, default=10.0, help="how long to measure")
    cal.add_argument("--json", action="store_true")
    return cal


def command(args) -> int:
    from pipeline.models import default_model
    from pipeline.ops.plan import calibrate

    result = calibrate(args.model or default_model(None), device=args.device, tile=args.tile,
                       precision=args.precision, seconds=args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} on {result['device']}: {result['mpx_per_second']} output Mpx/s "
              f"(tile {result['tile']}, {result['precision']}); stored in {result['cache']}")
    return EXIT_OK
