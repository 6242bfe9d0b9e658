"""`upscaler models`: the named models."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    models = subparsers.add_parser("models", help="list the named models")
    models.add_argument("--json", action="store_true", help="print the list as JSON")
    return models


def command(args) -> int:
    from pipeline.models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'name':<22}{'arch':<12}{'scale':<7}{'params':>10}  weights")
    for r in rows:
        print(f"{r['name']:<22}{r['arch']:<12}{str(r['scale']):<7}{r['params']:>10}  {r['weights']}")
    return EXIT_OK
