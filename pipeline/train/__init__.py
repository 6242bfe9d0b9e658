"""`upscaler train`: train a super-resolution model (L1/L2, perceptual,
adversarial, TV losses) on HR images from any fsspec folder, in one process
or on Ray Train workers, with resumable checkpoints and safetensors export.

API for the CLI and `jobs/train.py`:
    add_train_arguments(parser)   # adds the flags to an argparse parser
    run_train(args) -> int        # 0 on success, 2 on a usage/config error
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import Config, load_config, parse_setting

__all__ = ["Config", "add_train_arguments", "load_config", "config_from_args", "run_train"]


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help="TOML (or YAML with PyYAML) file; flags below override it")
    parser.add_argument("--hr", help="folder (any fsspec URL) of training HR images [data.hr]")
    parser.add_argument("--extra-hr", action="append", default=None, metavar="URL",
                        help="another training folder (repeatable) [data.extra_hr]")
    parser.add_argument("--arch", help="srcnn | espcn | edsr | rcan | span | compact | rrdb [model.arch]")
    parser.add_argument("--scale", type=int, help="upscaling factor [model.scale]")
    parser.add_argument("--out", help="run folder (any fsspec URL): checkpoints, metrics.jsonl, model.safetensors [train.out]")
    parser.add_argument("--export", help="also write the final EMA weights here (.safetensors) [train.export]")
    parser.add_argument("--steps", type=int, help="total training steps [train.steps]")
    parser.add_argument("--seed", type=int, help="[train.seed]")
    parser.add_argument("--workers", type=int, help="Ray Train workers; 0 = single process [train.workers]")
    parser.add_argument("--no-ray", action="store_true", help="single process without Ray (same as --workers 0)")
    parser.add_argument("--cpus-per-worker", type=float, help="[train.cpus_per_worker]")
    parser.add_argument("--device", help="auto | cpu | cuda [train.device]")
    parser.add_argument("--threads", type=int, help="torch threads per worker [train.threads]")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec storage option for data and outputs (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                        help="override any config setting, e.g. --set loss.lambda_perc=0.1 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


_FLAGS = {"hr": "data.hr", "extra_hr": "data.extra_hr", "arch": "model.arch", "scale": "model.scale",
          "out": "train.out", "export": "train.export", "steps": "train.steps", "seed": "train.seed",
          "workers": "train.workers", "cpus_per_worker": "train.cpus_per_worker", "device": "train.device",
          "threads": "train.threads"}


def config_from_args(args: argparse.Namespace) -> Config:
    """Config file, then --set overrides, then the dedicated flags."""
    cfg = load_config(args.config, args.overrides)
    for attr, dotted in _FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            cfg.override(dotted, value)
    if args.storage_option:
        options = dict(cfg.data.storage_options)
        for item in args.storage_option:
            try:
                key, value = parse_setting(item)
            except ValueError:  # not echoing the text: it may be a credential
                raise ValueError("bad --storage-option: expected KEY=VALUE") from None
            options[key] = value
        cfg.data.storage_options = options
    if getattr(args, "no_ray", False):
        cfg.train.workers = 0
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from .losses import MissingWeightsError

    try:
        cfg = config_from_args(args)
    except (ValueError, OSError) as error:
        print(f"upscaler train: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    try:
        if cfg.train.workers > 0:
            from .distributed import train_ray

            summary = train_ray(cfg, workers=cfg.train.workers)
        else:
            from .distributed import train_single

            summary = train_single(cfg)
    except (MissingWeightsError, FileNotFoundError) as error:
        print(f"upscaler train: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"upscaler train: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="upscaler train", description=__doc__.splitlines()[0]))
    return run_train(parser.parse_args(argv))
