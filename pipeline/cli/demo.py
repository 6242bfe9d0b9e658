"""`upscaler demo [DIR]`: write sample images (offline) and upscale them with `upscaler run`."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    demo = subparsers.add_parser("demo", help="write sample images (offline) and upscale them with the default model")
    demo.add_argument("dir", nargs="?", default="upscaler-demo", help="writes DIR/samples and DIR/upscaled")
    demo.add_argument("-m", "-n", "--model", default=None, help="as for `run` (default: the bundled x4 model)")
    demo.add_argument("--executor", choices=("ray", "local"), default="ray", help="as for `run` (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    return demo


def command(args) -> int:
    import posixpath

    from pipeline.cli import build_parser
    from pipeline.cli import run as run_command
    from pipeline.ops.samples import write_samples

    root = args.dir.rstrip("/")
    written = write_samples(posixpath.join(root, "samples"))
    print(f"wrote {len(written)} sample images under {root}/samples", file=sys.stderr)
    run_args = build_parser().parse_args(
        ["run", posixpath.join(root, "samples"), posixpath.join(root, "upscaled"), "--executor", args.executor]
        + (["--model", args.model] if args.model else []) + (["--json"] if args.json else [])
    )
    return run_command.command(run_args)
