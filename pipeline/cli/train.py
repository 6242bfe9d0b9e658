"""`upscaler train`: train a model; the flags and the work belong to `pipeline.train`."""

from __future__ import annotations

import argparse
import re


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pipeline.train import add_train_arguments

    train = subparsers.add_parser("train", help="train a model (weighted L1/L2, perceptual, adversarial, TV losses; Ray Train)")
    add_train_arguments(train)
    _show_defaults(train)
    return train


def _show_defaults(train: argparse.ArgumentParser) -> None:
    """Each flag's help names its default, as every other command's does: a flag that sets
    `[section.key]` takes the config file's value, else the built-in one (read from
    `pipeline.train.config.Config`, so the help cannot drift from it)."""
    from pipeline.train.config import Config

    built_in = Config()
    for action in train._actions:
        if not action.option_strings or action.nargs == 0 or "default" in (action.help or "").lower():
            continue
        setting = re.search(r"\[(\w+)\.(\w+)\]", action.help or "")
        if setting:
            value = getattr(getattr(built_in, setting.group(1)), setting.group(2))
            shown = "none" if value in ("", [], {}) else value
            action.help += f" (default: the --config file's, else {shown})"
        elif action.dest == "config":
            action.help += " (default: none, the built-in settings)"
        elif action.default in ([], None):
            action.help += " (default: none)"
        else:
            action.help += " (default: %(default)s)"


def command(args) -> int:
    from pipeline.train import run_train

    return run_train(args)
