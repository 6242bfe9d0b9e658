"""SPAN, from the authors' release layout (conv_1, block_N.c{1,2,3}_r, conv_cat,
conv_2, upsampler.0; every Conv3XC with sk, conv.0-2 and eval_conv) or this
project's plain layout (eval_conv only, `gain` 0: see arch.py).

The release's eval_conv is whatever the branches were when it was last
folded, possibly stale; `convert` folds the branches again, so the branches
are what counts, as in spandrel.
"""

from __future__ import annotations

import re

from ..base import NativeArch
from .arch import SPAN, fold_branches

REQUIRED = ("conv_1.eval_conv.weight", "block_1.c1_r.eval_conv.weight", "conv_cat.weight",
            "conv_2.eval_conv.weight", "upsampler.0.weight")


def detect(state_dict: dict, metadata: dict) -> dict | None:
    if not all(k in state_dict for k in REQUIRED):
        return None
    num_feat, num_in_ch = state_dict["conv_1.eval_conv.weight"].shape[:2]
    num_block = len({m.group(1) for k in state_dict if (m := re.match(r"block_(\d+)\.", k))})
    shuffled = state_dict["upsampler.0.weight"].shape[0]
    scale = next((s for s in range(1, 9) if shuffled == num_in_ch * s * s), None)
    if scale is None:
        return None
    gain = state_dict["conv_1.conv.0.weight"].shape[0] // num_in_ch if "conv_1.sk.weight" in state_dict else 0
    return {"scale": scale, "num_in_ch": num_in_ch, "num_out_ch": num_in_ch, "num_feat": num_feat,
            "num_block": num_block, "gain": gain, "norm": "no_norm" not in state_dict}


def convert(state_dict: dict) -> dict:
    """Fold every Conv3XC's branches into its eval_conv."""
    out = dict(state_dict)
    for key in [k for k in out if k.endswith(".sk.weight")]:
        p = key[: -len("sk.weight")]
        names = [f"{p}conv.{i}.{t}" for i in range(3) for t in ("weight", "bias")] + [f"{p}sk.weight", f"{p}sk.bias"]
        weight, bias = fold_branches(*(state_dict[n].float() for n in names))
        out[f"{p}eval_conv.weight"], out[f"{p}eval_conv.bias"] = weight, bias
    return out


def deploy(state_dict: dict) -> dict:
    """The plain layout (gain 0): folded eval_convs only, about a fifth of the
    release's bytes for the same output."""
    return {k: v for k, v in convert(state_dict).items() if ".sk." not in k and ".conv." not in k}


def build(config: dict) -> SPAN:
    return SPAN(**config)


def overlap(config: dict) -> int:
    """3 convs per block plus 3 outside: a receptive radius of about 21 LR pixels
    for the 6-block release; 32 keeps tile seams under one 8-bit level."""
    return 32 if config["num_block"] <= 8 else 48


# No skip carries the input to the output: every pixel passes through the features, and in bf16
# (8-bit mantissa) their rounding cost span-x2 0.04 dB on Set5 (36.613 -> 36.575; Set14 -0.017),
# over the 0.02 dB a default may cost; fp16 (10-bit) and fp32 keep it.
ARCH = NativeArch("SPAN", detect, build, overlap, supports_bf16=False, convert=convert, deploy=deploy)

__all__ = ["ARCH", "SPAN", "build", "convert", "deploy", "detect", "overlap"]
