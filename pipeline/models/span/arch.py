"""SPAN (Wan et al., "Swift Parameter-free Attention Network for Efficient
Super-Resolution", NTIRE 2024 efficient-SR winner), with the module and key
names of the authors' release (and spandrel's), so their checkpoints load
with strict keys.

Every 3x3 conv is a `Conv3XC`: trained as 1x1 -> 3x3 -> 1x1 widened by `gain`
plus a 1x1 skip, computed at inference as the single 3x3 conv they add up to
(`eval_conv`, folded whenever the module leaves training mode). `gain=0` is the
plain form, trained as the 3x3 conv itself: about 4x less work per training
step, which is what a CPU-only training budget needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import DIV2K_RGB_MEAN, MeanShiftRange


def fold_branches(w0, b0, w1, b1, w2, b2, wsk, bsk) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the 3x3 conv equal to conv2(conv1(conv0(pad(x)))) + sk(x).

    Exact, borders included: a zero-padded input pixel gives conv0's bias, which the
    folded bias counts at every tap, as the branch does."""
    w0, w2, wsk = w0.flatten(1), w2.flatten(1), wsk.flatten(1)
    weight = torch.einsum("om,mnyx,ni->oiyx", w2, w1, w0)
    bias = w2 @ (w1.sum((2, 3)) @ b0 + b1) + b2
    weight[:, :, 1, 1] += wsk
    return weight, bias + bsk


class Conv3XC(nn.Module):
    def __init__(self, c_in: int, c_out: int, gain: int = 2):
        super().__init__()
        self.gain = gain
        if gain:
            self.sk = nn.Conv2d(c_in, c_out, 1)
            self.conv = nn.Sequential(
                nn.Conv2d(c_in, c_in * gain, 1),
                nn.Conv2d(c_in * gain, c_out * gain, 3),
                nn.Conv2d(c_out * gain, c_out, 1),
            )
        self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    @torch.no_grad()
    def fold(self) -> None:
        """eval_conv <- the branches' sum (no-op for the plain form)."""
        if not self.gain:
            return
        c0, c1, c2 = self.conv
        weight, bias = fold_branches(c0.weight.float(), c0.bias.float(), c1.weight.float(), c1.bias.float(),
                                     c2.weight.float(), c2.bias.float(), self.sk.weight.float(), self.sk.bias.float())
        self.eval_conv.weight.copy_(weight)
        self.eval_conv.bias.copy_(bias)

    def train(self, mode: bool = True) -> "Conv3XC":
        if self.training and not mode:
            self.fold()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.gain:
            return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        return self.eval_conv(x)


class SPAB(nn.Module):
    """Three Conv3XC with SiLU between them, then the parameter-free attention:
    (features + input) * (sigmoid(features) - 0.5). Also returns the first
    conv's activated output, which SPAN concatenates: the release's in-place
    SiLU makes that tensor the activated one, and its weights were trained so."""

    def __init__(self, channels: int, gain: int):
        super().__init__()
        self.c1_r = Conv3XC(channels, channels, gain)
        self.c2_r = Conv3XC(channels, channels, gain)
        self.c3_r = Conv3XC(channels, channels, gain)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(out1)))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


class SPAN(nn.Module):
    """Input [0, 1] (mean-shifted and scaled to 0..255 inside unless `norm` is
    off); output [0, 1], as the release computes it (no de-normalisation)."""

    def __init__(
        self,
        scale: int = 4,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 48,
        num_block: int = 6,
        gain: int = 2,
        norm: bool = True,
        img_range: float = 255.0,
        rgb_mean: tuple[float, ...] = DIV2K_RGB_MEAN,
    ):
        super().__init__()
        # The release normalises on the way in only (BasicSR's shift and scale); an un-normalised
        # model is marked by its `no_norm` buffer.
        self.shift = MeanShiftRange(rgb_mean, img_range) if norm else None
        if not norm:
            self.register_buffer("no_norm", torch.zeros(1))
        self.conv_1 = Conv3XC(num_in_ch, num_feat, gain)
        for i in range(1, num_block + 1):
            self.add_module(f"block_{i}", SPAB(num_feat, gain))
        self.num_block = num_block
        self.conv_cat = nn.Conv2d(num_feat * 4, num_feat, 1)
        self.conv_2 = Conv3XC(num_feat, num_feat, gain)
        self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_out_ch * scale * scale, 3, padding=1),
                                       nn.PixelShuffle(scale))

    @torch.no_grad()
    def start_as_nearest(self) -> None:
        """Initialise so the network computes nearest-neighbour upsampling: SPAN has
        no skip from its input to its output, and from a random start its first
        thousands of steps only relearn the image (Set5 x2 below bicubic after 750
        CPU steps). Three feature channels carry the input through conv_1 and
        conv_cat to every sub-pixel of the upsampler; the paths from the blocks
        start at zero (as zero-initialised residual branches do) and are learnt.
        In the branch form the carry goes through conv_1's 1x1 skip, the last conv
        of its branches starting at zero for those channels."""
        c = self.conv_1.eval_conv.in_channels
        scale = int(round((self.upsampler[0].out_channels // c) ** 0.5))
        eye = torch.eye(c)
        first = self.conv_1.sk if self.conv_1.gain else self.conv_1.eval_conv
        centre = first.kernel_size[0] // 2
        first.weight[:c] = 0
        first.weight[:c, :, centre, centre] = eye
        first.bias[:c] = 0
        if self.conv_1.gain:
            self.conv_1.conv[2].weight[:c] = 0
            self.conv_1.conv[2].bias[:c] = 0
        self.conv_cat.weight[:c] = 0
        self.conv_cat.weight[:c, :c, 0, 0] = eye
        self.conv_cat.bias[:c] = 0
        up = self.upsampler[0]
        up.weight.zero_()
        for channel in range(c):  # PixelShuffle: output channel o reads conv channels o*s^2 .. o*s^2 + s^2 - 1
            up.weight[channel * scale * scale : (channel + 1) * scale * scale, channel, 1, 1] = (
                1 / self.shift.img_range if self.shift is not None else 1.0)
        mean = self.shift.mean.flatten() if self.shift is not None else torch.zeros(c)
        up.bias.copy_(mean.repeat_interleave(scale * scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shift is not None:
            x = self.shift.normalise(x)
        feature = self.conv_1(x)
        out, first = feature, None
        for i in range(1, self.num_block + 1):
            out, out1 = getattr(self, f"block_{i}")(out)
            first = out if first is None else first
        out = self.conv_cat(torch.cat([feature, self.conv_2(out), first, out1], 1))
        return self.upsampler(out)
