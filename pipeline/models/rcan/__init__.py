"""RCAN in BasicSR's key layout (body.N.residual_group.M.rcab.K, body.N.conv).
The authors' original layout (head/body/tail) is left to spandrel, which
loads it."""

from __future__ import annotations

from ..base import ModelLoadError, NativeArch
from ..common import default_mean, seq_len, upsample_scale
from .arch import RCAN

KEYS = (
    "conv_first.weight",
    "body.0.residual_group.0.rcab.0.weight",
    "body.0.residual_group.0.rcab.3.attention.1.weight",
    "body.0.conv.weight",
    "conv_after_body.weight",
    "upsample.0.weight",
    "conv_last.weight",
)


def detect(state_dict: dict, metadata: dict) -> dict | None:
    if not all(k in state_dict for k in KEYS):
        return None
    num_feat, num_in_ch = state_dict["conv_first.weight"].shape[:2]
    num_out_ch = state_dict["conv_last.weight"].shape[0]
    squeeze = state_dict["body.0.residual_group.0.rcab.3.attention.1.weight"].shape[0]
    scale = upsample_scale(state_dict, "upsample", num_feat)
    if scale is None:
        raise ModelLoadError("RCAN upsampler has no recognisable scale (2^n or 3)")
    if num_in_ch != num_out_ch:
        raise ModelLoadError(f"RCAN with {num_in_ch} input but {num_out_ch} output channels is not supported")
    return {
        "scale": scale,
        "num_in_ch": num_in_ch,
        "num_out_ch": num_out_ch,
        "num_feat": num_feat,
        "num_group": seq_len(state_dict, "body"),
        "num_block": seq_len(state_dict, "body.0.residual_group"),
        "squeeze_factor": num_feat // squeeze,
        "res_scale": float(metadata.get("res_scale", 1.0)),
        "img_range": float(metadata.get("img_range", 255.0)),
        "rgb_mean": tuple(float(m) for m in metadata.get("rgb_mean", default_mean(num_in_ch))),
    }


def build(config: dict) -> RCAN:
    return RCAN(**config)


def overlap(config: dict) -> int:
    """Heuristic, as for EDSR's large model (48): RCAN's receptive field
    (hundreds of convs) is far larger than any overlap, and channel attention
    is global within a tile (see arch.py), so tiles never match exactly."""
    return 48


# No fp16: features are in 0..255 units through hundreds of residual convs and
# overflow half precision (spandrel marks RCAN the same way); bf16 is fine.
ARCH = NativeArch("RCAN", detect, build, overlap, supports_half=False)

__all__ = ["ARCH", "RCAN", "build", "detect", "overlap"]
