"""`upscaler run SRC DST`: upscale every image under SRC into DST, with a Parquet manifest."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import EXIT_OK
from pipeline.cli.options import (EXIT_EMPTY, _execute, add_executor_options, add_price_option, add_run_options,
                                  config_from_args)


def add_parser(subparsers) -> argparse.ArgumentParser:
    run = subparsers.add_parser(
        "run", help="upscale every image under SRC into DST, with a Parquet manifest",
        epilog="exit status: 0 all done (or skipped, or no images under SRC without --fail-on-empty); 2 usage "
               "error or missing SRC; 3 some images failed; 4 storage unreachable; 5 stalled (Ray); 6 no images "
               "under SRC with --fail-on-empty; 130/143 Ctrl-C/SIGTERM")
    add_run_options(run)
    run.add_argument("--max-cost", type=float, default=None, metavar="USD",
                     help="refuse to start (exit 2, nothing written) when the estimate exceeds this; needs "
                          "--gpu-hour-price (default: no budget)")
    run.add_argument("--fail-on-empty", action="store_true",
                     help="exit 6 when SRC holds no images (after --include/--exclude), so a scheduled job aimed at "
                          "an empty or mistyped prefix fails (default: say so on stderr and exit 0)")
    add_price_option(run)
    add_executor_options(run)
    return run


def command(args) -> int:
    config = config_from_args(args)
    if _no_images(config):
        return EXIT_EMPTY if args.fail_on_empty else EXIT_OK
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


def _no_images(config) -> bool:
    """Whether the listing is empty, said in one line on stderr. Checked before the model
    loads and before anything is written (no run record for a run of nothing); the listing
    goes directory by directory, so this stops at the first image found."""
    from pipeline.stages.list import list_sources

    if next(iter(list_sources(config)), None) is not None:
        return False
    from pipeline.job.prepare import load_spec_model

    load_spec_model(config)  # an unknown or unreadable model is still a usage error (exit 2), images or not
    where = (f"in the list {config.from_list}" if config.from_list
             else f"under {config.src} (after --include/--exclude)")
    print(f"upscaler run: no images {where}; nothing was written", file=sys.stderr)
    return True
