"""Building the network to train, by architecture name, in exactly the form
`pipeline.models.load_model` recognises, so exported weights load without
any extra description: the native archs (srcnn, espcn, edsr, rcan, span, compact) through
their own `build`, rrdb (ESRGAN's RRDBNet) through spandrel."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from pipeline.models import compact, edsr, espcn, rcan, span, srcnn
from pipeline.models.weights import read_state_dict

NATIVE = {
    "srcnn": (srcnn.ARCH, srcnn.SRCNN),
    "espcn": (espcn.ARCH, espcn.ESPCN),
    "edsr": (edsr.ARCH, edsr.EDSR),
    "rcan": (rcan.ARCH, rcan.RCAN),
    "span": (span.ARCH, span.SPAN),
    "compact": (compact.ARCH, compact.SRVGGNetCompact),
}
ARCH_NAMES = (*NATIVE, "rrdb")


def build_model(arch: str, scale: int, options: dict) -> tuple[nn.Module, str, dict]:
    """(module, architecture name as load_model reports it, full config)."""
    arch = arch.lower()
    if arch in NATIVE:
        native, cls = NATIVE[arch]
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                    if k != "self" and p.default is not inspect.Parameter.empty}
        unknown = set(options) - set(defaults)
        if unknown:
            raise ValueError(f"model.options {sorted(unknown)} are not {arch} arguments (known: {', '.join(defaults)})")
        config = {**defaults, **options, "scale": scale}
        return native.build(config), native.name, config
    if arch == "rrdb":
        from spandrel.architectures.ESRGAN import ESRGAN

        config = {"num_filters": 64, "num_blocks": 23, **options, "scale": scale}
        return ESRGAN(in_nc=3, out_nc=3, **config), "ESRGAN", config
    raise ValueError(f"unknown model.arch {arch!r}; choose one of {', '.join(ARCH_NAMES)}")


def init_from(module: nn.Module, uri: str, storage_options: dict | None = None) -> tuple[list[str], list[str]]:
    """Copy the tensors of a weight file whose name and shape match (e.g. an
    x2 model's body into an x4 model, as the EDSR paper does); returns
    (copied, skipped) key lists."""
    state_dict, _, _ = read_state_dict(uri, storage_options)
    own = module.state_dict()
    copied = [k for k, v in state_dict.items() if k in own and own[k].shape == v.shape]
    skipped = sorted(set(own) - set(copied))
    with torch.no_grad():
        for k in copied:
            own[k].copy_(state_dict[k])
    return copied, skipped
