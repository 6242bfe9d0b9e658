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
                     help="tile size in input pixels (default: from the memory budget, as `run` picks it)")
    cal.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                     help="default: auto (fp32 on CPU; bf16 or fp16 on CUDA), as `run` picks it")
    cal.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="same as --precision fp32")
    cal.add_argument("--seconds", type=float, default=10.0, help="how long to measure (default: %(default)s)")
    cal.add_argument("--json", action="store_true", help="print the result as JSON")
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
