"""ESPCN: three convs conv1..conv3, the last with channels * scale**2 outputs
(the input of the pixel shuffle), which is where the scale comes from."""

from __future__ import annotations

import math

from ..base import NativeArch
from .arch import ESPCN

KEYS = {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}


def detect(state_dict: dict, metadata: dict) -> dict | None:
    if set(state_dict) != KEYS:
        return None
    w1, w2, w3 = (state_dict[f"conv{i}.weight"] for i in (1, 2, 3))
    if w1.ndim != 4:
        return None
    channels = w1.shape[1]
    ratio, rest = divmod(w3.shape[0], channels)
    scale = math.isqrt(ratio)
    if rest or scale < 2 or scale * scale != ratio:
        return None
    return {
        "scale": scale,
        "num_in_ch": channels,
        "num_out_ch": channels,
        "num_feat": (w1.shape[0], w2.shape[0]),
        "kernel_sizes": (w1.shape[-1], w2.shape[-1], w3.shape[-1]),
    }


def build(config: dict) -> ESPCN:
    return ESPCN(**config)


def overlap(config: dict) -> int:
    """Receptive radius (k1+k2+k3-3)/2 LR pixels (4 for 5-3-3); the tiler
    discards the outer quarter of the overlap, so 4x that makes tiles exact."""
    return 4 * math.ceil((sum(config["kernel_sizes"]) - 3) / 2)


ARCH = NativeArch("ESPCN", detect, build, overlap)

__all__ = ["ARCH", "ESPCN", "build", "detect", "overlap"]
