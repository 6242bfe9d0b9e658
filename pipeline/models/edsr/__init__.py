"""EDSR, from either of its two checkpoint layouts:

- BasicSR: conv_first, body.N.conv1/conv2, conv_after_body, upsample.N, conv_last;
- the authors' EDSR-PyTorch release: sub_mean/add_mean (1x1 MeanShift convs),
  head.0, body.N.body.0/2, body.{num_block} (the conv after the blocks),
  tail.0.N (upsampler), tail.1 (last conv). `convert` renames these onto the
  BasicSR module and turns the MeanShift convs into its mean and img_range:
  EDSR-PyTorch feeds 0..255 images and subtracts rgb_range * mean, which is
  exactly BasicSR's (x - mean) * 255 on a [0, 1] input.

res_scale is not visible in the weights: 0.1 for the paper's large model
(32 blocks x 256 features), else 1; metadata "res_scale" overrides.
"""

from __future__ import annotations

import re

import torch

from ..base import ModelLoadError, NativeArch
from ..common import DIV2K_RGB_MEAN, default_mean, seq_len, upsample_scale
from .arch import EDSR

BASICSR_KEYS = ("conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight", "upsample.0.weight", "conv_last.weight")
ORIGINAL_KEYS = ("head.0.weight", "body.0.body.0.weight", "body.0.body.2.weight", "tail.0.0.weight", "tail.1.weight")


def _is_original(state_dict: dict) -> bool:
    return all(k in state_dict for k in ORIGINAL_KEYS)


def detect(state_dict: dict, metadata: dict) -> dict | None:
    if _is_original(state_dict):
        first, up, last = "head.0.weight", "tail.0", "tail.1.weight"
        num_block = seq_len(state_dict, "body") - 1  # the last entry is the conv after the blocks
    elif all(k in state_dict for k in BASICSR_KEYS):
        first, up, last = "conv_first.weight", "upsample", "conv_last.weight"
        num_block = seq_len(state_dict, "body")
    else:
        return None
    num_feat, num_in_ch = state_dict[first].shape[:2]
    num_out_ch = state_dict[last].shape[0]
    scale = upsample_scale(state_dict, up, num_feat)
    if scale is None:
        raise ModelLoadError(f"EDSR upsampler under '{up}' has no recognisable scale (2^n or 3)")
    if num_in_ch != num_out_ch:
        raise ModelLoadError(f"EDSR with {num_in_ch} input but {num_out_ch} output channels is not supported")
    mean, img_range = _mean_shift(state_dict) if _is_original(state_dict) else (default_mean(num_in_ch), 255.0)
    res_scale = 0.1 if (num_feat, num_block) == (256, 32) else 1.0
    return {
        "scale": scale,
        "num_in_ch": num_in_ch,
        "num_out_ch": num_out_ch,
        "num_feat": num_feat,
        "num_block": num_block,
        "res_scale": float(metadata.get("res_scale", res_scale)),
        "img_range": float(metadata.get("img_range", img_range)),
        "rgb_mean": tuple(float(m) for m in metadata.get("rgb_mean", mean)),
    }


def _mean_shift(state_dict: dict) -> tuple[tuple[float, ...], float]:
    """rgb_mean and rgb_range from EDSR-PyTorch's MeanShift convs, whose
    weights are eye/std and biases -/+ rgb_range * mean / std."""
    if "add_mean.bias" not in state_dict:
        return DIV2K_RGB_MEAN, 255.0
    weights = [state_dict[f"{name}.weight"].float().flatten(1) for name in ("sub_mean", "add_mean")]
    add, sub = state_dict["add_mean.bias"].float(), state_dict["sub_mean.bias"].float()
    eye = torch.eye(len(add))
    if not all(torch.allclose(w, eye, atol=1e-6) for w in weights) or not torch.allclose(sub, -add, atol=1e-4):
        raise ModelLoadError("EDSR MeanShift with rgb_std != 1 is not supported")
    rgb_range = 255.0 if add.abs().max() > 1 else 1.0
    return tuple(round(float(m), 6) for m in add / rgb_range), rgb_range


_RENAMES = [
    (r"head\.0\.", "conv_first."),
    (r"body\.(\d+)\.body\.0\.", r"body.\1.conv1."),
    (r"body\.(\d+)\.body\.2\.", r"body.\1.conv2."),
    (r"tail\.0\.(\d+)\.", r"upsample.\1."),
    (r"tail\.1\.", "conv_last."),
]


def convert(state_dict: dict) -> dict:
    """EDSR-PyTorch keys -> BasicSR keys; BasicSR state dicts pass through."""
    if not _is_original(state_dict):
        return state_dict
    after_body = f"body.{seq_len(state_dict, 'body') - 1}."
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("sub_mean.", "add_mean.")):
            continue  # folded into the module's mean (see detect)
        if key.startswith(after_body):
            key = "conv_after_body." + key[len(after_body) :]
        for pattern, replacement in _RENAMES:
            key = re.sub("^" + pattern, replacement, key)
        out[key] = value
    return out


def build(config: dict) -> EDSR:
    return EDSR(**config)


def overlap(config: dict) -> int:
    """Heuristic, not exact: the receptive radius (about 2 * num_block + 4 LR
    pixels) is beyond any practical overlap, so this relies on trained
    weights' effective receptive field. Measured on the trained 18-conv
    Compact model (tests): overlap 16 leaves seams up to 5/255, 32 under
    0.5/255. EDSR is at least as deep: 32 for the 16-block baseline, 48 for
    deeper models such as the 32-block large one."""
    return 32 if config["num_block"] <= 16 else 48


ARCH = NativeArch("EDSR", detect, build, overlap, convert=convert)

__all__ = ["ARCH", "EDSR", "build", "convert", "detect", "overlap"]
