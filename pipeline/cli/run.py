"""`upscaler run SRC DST`: upscale every image under SRC into DST, with a Parquet manifest."""

from __future__ import annotations

import argparse

from pipeline.cli.options import _execute, add_executor_options, add_price_option, add_run_options, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    run = subparsers.add_parser("run", help="upscale every image under SRC into DST, with a Parquet manifest")
    add_run_options(run)
    run.add_argument("--max-cost", type=float, default=None, metavar="USD",
                     help="refuse to start (exit 2, nothing written) when the estimate exceeds this; needs "
                          "--gpu-hour-price (default: no budget)")
    add_price_option(run)
    add_executor_options(run)
    return run


def command(args) -> int:
    config = config_from_args(args)
    if args.max_cost is not None:
        from pipeline.ops.plan import estimate

        if args.gpu_hour_price is None:
            raise ValueError("--max-cost needs --gpu-hour-price to turn device-seconds into money")
        planned = estimate(config, gpu_hour_price=args.gpu_hour_price, include_quarantined=args.include_quarantined)
        if planned.estimated_cost > args.max_cost:
            raise ValueError(f"estimated cost {planned.estimated_cost:.2f} USD exceeds --max-cost {args.max_cost:.2f} "
                             f"({planned.todo} images, {planned.megapixels_out:.1f} output Mpx, "
                             f"{planned.estimated_device_seconds:.0f} device-s at {planned.mpx_per_second} Mpx/s, "
                             f"{planned.throughput_source}); nothing was written")
    return _execute(config, args)
