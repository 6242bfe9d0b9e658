"""`upscaler plan SRC DST`: what a run would do and cost; runs nothing."""

from __future__ import annotations

import argparse

from pipeline.cli import EXIT_OK
from pipeline.cli.options import _print_plan, add_price_option, add_run_options, add_storage_option, config_from_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    plan = subparsers.add_parser("plan", help="what a run would do and cost; runs nothing")
    add_run_options(plan)
    add_price_option(plan)
    add_storage_option(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    return plan


def command(args) -> int:
    from pipeline.ops.plan import estimate

    planned = estimate(config_from_args(args), gpu_hour_price=args.gpu_hour_price,
                       include_quarantined=args.include_quarantined).as_dict()
    _print_plan(planned, args.json)
    return EXIT_OK
