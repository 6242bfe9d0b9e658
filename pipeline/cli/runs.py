"""`upscaler runs DST`: the runs recorded under DST, with their counts and cost."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK
from pipeline.cli.options import EXIT_EMPTY, add_price_option, add_storage_option, no_manifest


def add_parser(subparsers) -> argparse.ArgumentParser:
    runs = subparsers.add_parser("runs", help="list the runs recorded under DST",
                                 epilog="exit status: 0 listed; 6 no manifest under DST (nothing was ever run there: "
                                        "a mistyped DST, most likely)")
    runs.add_argument("dst", help="the destination of the runs")
    add_price_option(runs)
    add_storage_option(runs)
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    return runs


def command(args) -> int:
    from pipeline.ops.runs import list_runs

    if no_manifest("runs", args.dst, dict(args.storage_option)):
        return EXIT_EMPTY
    rows = list_runs(args.dst, dict(args.storage_option), gpu_hour_price=args.gpu_hour_price)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    print(f"{'run_id':<26}{'ok':>7}{'failed':>7}{'skipped':>8}{'seconds':>9}{'Mpx out':>9}{'device-s':>10}{'cost':>9}")
    for r in rows:
        cost = "" if r["cost"] is None else f"{r['cost']:.4f}"
        print(f"{r['run_id']:<26}{r['ok']:>7}{r['failed']:>7}{r['skipped']:>8}{r['seconds']:>9.1f}"
              f"{r['megapixels_out']:>9.2f}{r['device_seconds']:>10.1f}{cost:>9}")
    return EXIT_OK
