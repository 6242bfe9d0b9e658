"""The types every part of the model zoo shares: what a loaded model is, how
loading fails, and what a native architecture has to provide."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


class ModelLoadError(ValueError):
    """A model file or name that cannot be loaded; the message names it."""


@dataclass
class LoadedModel:
    """A model ready for the engine, with what the engine needs to tile it."""

    name: str  # registry name, or file stem for checkpoints
    arch: str  # "SRCNN", "ESPCN", "EDSR", "RCAN", "bicubic", "lanczos", or spandrel's id ("Compact", "ESRGAN", ...)
    module: torch.nn.Module  # eval mode, CPU; NCHW [0,1] in -> NCHW x scale out, roughly [0,1], not clamped
    scale: int
    in_channels: int
    out_channels: int
    size_multiple: int = 1  # input H and W must be multiples of this
    min_size: int = 0
    square: bool = False
    overlap: int = 16  # recommended tile overlap in input pixels
    tiling: str = "supported"  # "supported" | "discouraged" | "internal"
    supports_half: bool = True
    supports_bf16: bool = True
    params: int = 0
    sha256: str | None = None  # of the weight file's bytes; None for parameter-free models
    source: str = "builtin"  # path/URL it came from
    config: dict = field(default_factory=dict)  # recognised hyper-parameters


StateDict = dict[str, torch.Tensor]


def _same_layout(state_dict: StateDict) -> StateDict:
    return state_dict


@dataclass(frozen=True)
class NativeArch:
    """An architecture this package implements itself (one folder each).

    `detect(state_dict, metadata)` returns the config (the keyword arguments of
    `build`) when the keys are this architecture's, else None; `metadata` holds
    the file's metadata, values JSON-decoded. `convert` maps a foreign key
    layout of the same network onto the module's own keys. `overlap(config)`
    is the tile overlap to recommend, in input pixels. `deploy` gives the
    smallest state dict computing the same inference (SPAN: the folded convs
    without their training branches), for shipping.
    """

    name: str
    detect: Callable[[StateDict, dict], dict | None]
    build: Callable[[dict], torch.nn.Module]
    overlap: Callable[[dict], int]
    supports_half: bool = True
    supports_bf16: bool = True  # False: `--precision auto` never picks bf16 (explicit bf16 still runs)
    convert: Callable[[StateDict], StateDict] = _same_layout
    deploy: Callable[[StateDict], StateDict] = _same_layout
