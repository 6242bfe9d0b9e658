"""`upscaler train`: train a model; the flags and the work belong to `pipeline.train`."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pipeline.train import add_train_arguments

    train = subparsers.add_parser("train", help="train a model (weighted L1/L2, perceptual, adversarial, TV losses; Ray Train)")
    add_train_arguments(train)
    return train


def command(args) -> int:
    from pipeline.train import run_train

    return run_train(args)
