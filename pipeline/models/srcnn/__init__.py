"""SRCNN: recognised by its three convs conv1..conv3 whose last one maps back
to image channels (ESPCN's has scale**2 times as many)."""

from __future__ import annotations

import math

from ..base import ModelLoadError, NativeArch
from .arch import SRCNN

KEYS = {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}


def detect(state_dict: dict, metadata: dict) -> dict | None:
    if set(state_dict) != KEYS:
        return None
    w1, w2, w3 = (state_dict[f"conv{i}.weight"] for i in (1, 2, 3))
    if w1.ndim != 4 or w3.shape[0] != w1.shape[1]:
        return None
    # Nothing in the weights depends on the scale: the bicubic step does it.
    scale = metadata.get("scale")
    if isinstance(scale, float) and scale.is_integer():
        scale = int(scale)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ModelLoadError(
            "SRCNN weights do not determine the scale and the file carries no 'scale' "
            "(safetensors metadata or a top-level int in a .pth dict); re-save it with save_model"
        )
    return {
        "scale": scale,
        "num_in_ch": w1.shape[1],
        "num_out_ch": w3.shape[0],
        "num_feat": (w1.shape[0], w2.shape[0]),
        "kernel_sizes": (w1.shape[-1], w2.shape[-1], w3.shape[-1]),
    }


def build(config: dict) -> SRCNN:
    return SRCNN(**config)


def overlap(config: dict) -> int:
    """The tiler ignores the outer quarter of the overlap, so that quarter must
    hold the receptive radius in LR pixels: bicubic's 2 plus the HR convs'
    (k1+k2+k3-3)/2 divided by the scale -> 6 at x2 for 9-5-5; 4x that is 24."""
    radius = 2 + (sum(config["kernel_sizes"]) - 3) / 2 / config["scale"]
    return 4 * math.ceil(radius)


ARCH = NativeArch("SRCNN", detect, build, overlap)

__all__ = ["ARCH", "SRCNN", "build", "detect", "overlap"]
