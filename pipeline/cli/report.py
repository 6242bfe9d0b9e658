"""`upscaler report DST`: a static HTML report of a run under DST/_report/."""

from __future__ import annotations

import argparse

from pipeline.cli import EXIT_OK
from pipeline.cli.options import add_storage_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    report = subparsers.add_parser("report", help="write a static HTML report of a run under DST/_report/")
    report.add_argument("dst", help="the destination of the run")
    report.add_argument("--run-id", default=None, help="default: the latest run")
    add_storage_option(report)
    return report


def command(args) -> int:
    from pipeline.ops.report import write_report

    print(write_report(args.dst, args.run_id, dict(args.storage_option)))
    return EXIT_OK
