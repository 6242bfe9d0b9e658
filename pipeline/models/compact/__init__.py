"""SRVGGNetCompact from the Real-ESRGAN release layout: body.0 (first conv),
then PReLU / conv pairs, the last conv's width being out_ch * scale**2."""

from __future__ import annotations

import math

from ..common import seq_len
from ..base import NativeArch
from .arch import SRVGGNetCompact


def detect(state_dict: dict, metadata: dict) -> dict | None:
    n = seq_len(state_dict, "body")
    if n < 3 or n % 2 == 0 or set(state_dict) != {f"body.{i}.{p}" for i in range(n) for p in
                                                    (("weight", "bias") if i % 2 == 0 else ("weight",))}:
        return None
    first, last = state_dict["body.0.weight"], state_dict[f"body.{n - 1}.weight"]
    if first.ndim != 4 or any(state_dict[f"body.{i}.weight"].ndim != 1 for i in range(1, n, 2)):
        return None
    num_feat, num_in_ch = first.shape[:2]
    ratio, rest = divmod(last.shape[0], num_in_ch)
    scale = math.isqrt(ratio)
    if rest or scale * scale != ratio:
        return None
    return {"scale": scale, "num_in_ch": num_in_ch, "num_out_ch": num_in_ch, "num_feat": num_feat,
            "num_conv": (n - 3) // 2}


def build(config: dict) -> SRVGGNetCompact:
    return SRVGGNetCompact(**config)


def overlap(config: dict) -> int:
    """Measured on the 18-conv release model (tests): overlap 16 leaves seams up to
    5/255, 32 under 0.5/255."""
    return 32 if config["num_conv"] <= 24 else 48


ARCH = NativeArch("Compact", detect, build, overlap)

__all__ = ["ARCH", "SRVGGNetCompact", "build", "detect", "overlap"]
