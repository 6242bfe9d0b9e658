"""Model zoo: checkpoints are recognised from their keys, load safely from any
fsspec location, and the loaded modules compute what the original
architectures compute."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import ModelLoadError, list_models, load_model, read_state_dict, save_model
from pipeline.models import edsr, rcan
from pipeline.inference.resize import resize_torch
from pipeline.inference.tiling import Stitcher, plan_tiles

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANIMEVIDEO = SHARED / "weights" / "realesr-animevideov3.pth"
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


# --- independent references: key names and forwards written from the papers'
# --- and BasicSR's layouts, not from pipeline.models

def _rand(*shape, generator):
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(*shape, generator=generator) / math.sqrt(fan_in)


def _conv_keys(sd, name, c_out, c_in, k, g):
    sd[f"{name}.weight"] = _rand(c_out, c_in, k, k, generator=g)
    sd[f"{name}.bias"] = _rand(c_out, generator=g) * 0.1


def _upsample_keys(sd, prefix, feat, scale, g):
    if scale == 3:
        _conv_keys(sd, f"{prefix}.0", 9 * feat, feat, 3, g)
    else:
        for i in range(int(math.log2(scale))):
            _conv_keys(sd, f"{prefix}.{2 * i}", 4 * feat, feat, 3, g)


def srcnn_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv_keys(sd, "conv1", 64, 3, 9, g)
    _conv_keys(sd, "conv2", 32, 64, 5, g)
    _conv_keys(sd, "conv3", 3, 32, 5, g)
    return sd


def espcn_state_dict(scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv_keys(sd, "conv1", 64, 3, 5, g)
    _conv_keys(sd, "conv2", 32, 64, 3, g)
    _conv_keys(sd, "conv3", 3 * scale * scale, 32, 3, g)
    return sd


def basicsr_edsr_state_dict(scale, feat=16, blocks=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv_keys(sd, "conv_first", feat, 3, 3, g)
    for i in range(blocks):
        _conv_keys(sd, f"body.{i}.conv1", feat, feat, 3, g)
        _conv_keys(sd, f"body.{i}.conv2", feat, feat, 3, g)
    _conv_keys(sd, "conv_after_body", feat, feat, 3, g)
    _upsample_keys(sd, "upsample", feat, scale, g)
    _conv_keys(sd, "conv_last", 3, feat, 3, g)
    return sd


def basicsr_rcan_state_dict(scale, feat=16, groups=1, blocks=1, squeeze=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    _conv_keys(sd, "conv_first", feat, 3, 3, g)
    for i in range(groups):
        for j in range(blocks):
            p = f"body.{i}.residual_group.{j}.rcab"
            _conv_keys(sd, f"{p}.0", feat, feat, 3, g)
            _conv_keys(sd, f"{p}.2", feat, feat, 3, g)
            _conv_keys(sd, f"{p}.3.attention.1", feat // squeeze, feat, 1, g)
            _conv_keys(sd, f"{p}.3.attention.3", feat, feat // squeeze, 1, g)
        _conv_keys(sd, f"body.{i}.conv", feat, feat, 3, g)
    _conv_keys(sd, "conv_after_body", feat, feat, 3, g)
    _upsample_keys(sd, "upsample", feat, scale, g)
    _conv_keys(sd, "conv_last", 3, feat, 3, g)
    return sd


def _conv(sd, name, x):
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, sd[f"{name}.bias"], padding=w.shape[-1] // 2)


def _upsample(sd, prefix, x):
    i = 0
    while f"{prefix}.{i}.weight" in sd:
        w = sd[f"{prefix}.{i}.weight"]
        x = F.pixel_shuffle(_conv(sd, f"{prefix}.{i}", x), math.isqrt(w.shape[0] // w.shape[1]))
        i += 2
    return x


def srcnn_reference(sd, x, scale):
    x = resize_torch(x, (x.shape[-2] * scale, x.shape[-1] * scale), kernel="cubic")
    return _conv(sd, "conv3", F.relu(_conv(sd, "conv2", F.relu(_conv(sd, "conv1", x)))))


def espcn_reference(sd, x, scale):
    x = torch.tanh(_conv(sd, "conv2", torch.tanh(_conv(sd, "conv1", x))))
    return F.pixel_shuffle(_conv(sd, "conv3", x), scale)


def edsr_reference(sd, x, blocks, res_scale=1.0):
    """BasicSR's EDSR.forward: (x - mean) * 255, resblocks, upsample, / 255 + mean."""
    mean = torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1)
    h = _conv(sd, "conv_first", (x - mean) * 255)
    r = h
    for i in range(blocks):
        r = r + res_scale * _conv(sd, f"body.{i}.conv2", F.relu(_conv(sd, f"body.{i}.conv1", r)))
    h = h + _conv(sd, "conv_after_body", r)
    return _conv(sd, "conv_last", _upsample(sd, "upsample", h)) / 255 + mean


def rcan_reference(sd, x, groups=1, blocks=1):
    """BasicSR's RCAN.forward, with its residual channel attention blocks."""
    mean = torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1)
    h = _conv(sd, "conv_first", (x - mean) * 255)
    r = h
    for i in range(groups):
        group_in = r
        for j in range(blocks):
            p = f"body.{i}.residual_group.{j}.rcab"
            y = _conv(sd, f"{p}.2", F.relu(_conv(sd, f"{p}.0", r)))
            pooled = y.mean(dim=(2, 3), keepdim=True)
            gate = torch.sigmoid(_conv(sd, f"{p}.3.attention.3", F.relu(_conv(sd, f"{p}.3.attention.1", pooled))))
            r = r + y * gate
        r = group_in + _conv(sd, f"body.{i}.conv", r)
    h = h + _conv(sd, "conv_after_body", r)
    return _conv(sd, "conv_last", _upsample(sd, "upsample", h)) / 255 + mean


class OriginalEDSR(nn.Module):
    """sanghyun-son/EDSR-PyTorch model/edsr.py (with common.py's MeanShift,
    ResBlock and Upsampler), 0..255 in and out."""

    class MeanShift(nn.Conv2d):
        def __init__(self, rgb_range, rgb_mean, sign):
            super().__init__(3, 3, kernel_size=1)
            self.weight.data = torch.eye(3).view(3, 3, 1, 1)
            self.bias.data = sign * rgb_range * torch.tensor(rgb_mean)

    class ResBlock(nn.Module):
        def __init__(self, n_feats, res_scale):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(n_feats, n_feats, 3, padding=1), nn.ReLU(True), nn.Conv2d(n_feats, n_feats, 3, padding=1))
            self.res_scale = res_scale

        def forward(self, x):
            return self.body(x).mul(self.res_scale) + x

    def __init__(self, scale, n_resblocks=2, n_feats=16, res_scale=1.0, rgb_mean=(0.5, 0.4, 0.3)):
        super().__init__()
        self.sub_mean = self.MeanShift(255, rgb_mean, -1)
        self.add_mean = self.MeanShift(255, rgb_mean, 1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        blocks = [self.ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        self.body = nn.Sequential(*blocks, nn.Conv2d(n_feats, n_feats, 3, padding=1))
        up = []
        if scale == 3:
            up += [nn.Conv2d(n_feats, 9 * n_feats, 3, padding=1), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                up += [nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1), nn.PixelShuffle(2)]
        self.tail = nn.Sequential(nn.Sequential(*up), nn.Conv2d(n_feats, 3, 3, padding=1))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        res = self.body(x)
        res += x
        return self.add_mean(self.tail(res))


def save_pth(path: Path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def image(h=7, w=5, seed=1):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- recognition -------------------------------------------------------------

def _case(arch, scale):
    """(state dict, extra file entries, expected config, reference forward)."""
    if arch == "SRCNN":
        sd = srcnn_state_dict()
        config = {"scale": scale, "num_in_ch": 3, "num_out_ch": 3, "num_feat": (64, 32), "kernel_sizes": (9, 5, 5)}
        return sd, {"scale": scale}, config, lambda x: srcnn_reference(sd, x, scale)
    if arch == "ESPCN":
        sd = espcn_state_dict(scale)
        config = {"scale": scale, "num_in_ch": 3, "num_out_ch": 3, "num_feat": (64, 32), "kernel_sizes": (5, 3, 3)}
        return sd, {}, config, lambda x: espcn_reference(sd, x, scale)
    common = {"scale": scale, "num_in_ch": 3, "num_out_ch": 3, "num_feat": 16, "num_block": 2 if arch == "EDSR" else 1}
    tail = {"res_scale": 1.0, "img_range": 255.0, "rgb_mean": DIV2K_MEAN}
    if arch == "EDSR":
        sd = basicsr_edsr_state_dict(scale)
        return sd, {}, {**common, **tail}, lambda x: edsr_reference(sd, x, blocks=2)
    sd = basicsr_rcan_state_dict(scale)
    config = {**common, "num_group": 1, "squeeze_factor": 4, **tail}
    return sd, {}, config, lambda x: rcan_reference(sd, x)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("arch", ["SRCNN", "ESPCN", "EDSR", "RCAN"])
def test_native_checkpoint_is_recognised_and_reproduces_the_reference_forward(tmp_path, arch, scale):
    sd, extra, config, reference = _case(arch, scale)
    model = load_model(save_pth(tmp_path / f"{arch}_x{scale}.pth", {**sd, **extra}))
    assert (model.arch, model.scale, model.config) == (arch, scale, config)
    assert (model.in_channels, model.out_channels) == (3, 3)
    assert model.params == sum(t.numel() for t in sd.values())
    assert not model.module.training
    x = image()
    with torch.no_grad():
        out = model.module(x)
    assert out.shape == (1, 3, 7 * scale, 5 * scale)
    torch.testing.assert_close(out, reference(x), rtol=1e-4, atol=1e-4)


def test_srcnn_without_a_scale_is_refused_saying_so(tmp_path):
    path = save_pth(tmp_path / "srcnn.pth", srcnn_state_dict())
    with pytest.raises(ModelLoadError, match=r"srcnn\.pth.*scale"):
        load_model(path)


def test_srcnn_scale_comes_from_safetensors_metadata(tmp_path):
    path = tmp_path / "srcnn.safetensors"
    safetensors.torch.save_file(srcnn_state_dict(), path, metadata={"scale": "3"})
    model = load_model(str(path))
    assert (model.arch, model.scale) == ("SRCNN", 3)
    assert model.module(image()).shape == (1, 3, 21, 15)


def test_edsr_large_is_recognised_with_res_scale_0_1():
    # Shapes only (meta tensors): the 43M-parameter model is never allocated.
    with torch.device("meta"):
        sd = edsr.build({"scale": 4, "num_feat": 256, "num_block": 32}).state_dict()
    config = edsr.ARCH.detect(sd, {})
    assert {k: config[k] for k in ("scale", "num_feat", "num_block", "res_scale")} == {
        "scale": 4, "num_feat": 256, "num_block": 32, "res_scale": 0.1,
    }
    assert edsr.ARCH.overlap(config) == 48


def test_edsr_baseline_has_res_scale_1_unless_metadata_says_otherwise():
    sd = basicsr_edsr_state_dict(2, feat=64, blocks=16)
    assert edsr.ARCH.detect(sd, {})["res_scale"] == 1.0
    assert edsr.ARCH.detect(sd, {"res_scale": 0.2})["res_scale"] == 0.2
    assert edsr.ARCH.overlap(edsr.ARCH.detect(sd, {})) == 32


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_pytorch_release_layout_loads_and_takes_unit_range_input(tmp_path, scale):
    torch.manual_seed(scale)
    original = OriginalEDSR(scale).eval()
    assert {"sub_mean.weight", "head.0.weight", "body.0.body.2.weight", "body.2.weight", "tail.0.0.weight", "tail.1.weight"} <= set(original.state_dict())
    model = load_model(save_pth(tmp_path / "edsr_baseline.pt", original.state_dict()))
    assert (model.arch, model.scale) == ("EDSR", scale)
    assert model.config["rgb_mean"] == pytest.approx((0.5, 0.4, 0.3))
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), original(x * 255) / 255, rtol=1e-4, atol=1e-4)


def test_rcan_squeeze_factor_and_depth_are_read_from_the_weights(tmp_path):
    sd = basicsr_rcan_state_dict(2, feat=32, groups=2, blocks=3, squeeze=8)
    config = rcan.ARCH.detect(sd, {})
    assert (config["num_group"], config["num_block"], config["squeeze_factor"], config["num_feat"]) == (2, 3, 8, 32)
    model = load_model(save_pth(tmp_path / "rcan.pth", sd))
    assert not model.supports_half
    torch.testing.assert_close(model.module(image()), rcan_reference(sd, image(), groups=2, blocks=3), rtol=1e-4, atol=1e-4)


def test_grayscale_espcn_is_recognised_with_one_channel(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {}
    _conv_keys(sd, "conv1", 64, 1, 5, g)
    _conv_keys(sd, "conv2", 32, 64, 3, g)
    _conv_keys(sd, "conv3", 9, 32, 3, g)
    model = load_model(save_pth(tmp_path / "gray.pth", sd))
    assert (model.arch, model.scale, model.in_channels, model.out_channels) == ("ESPCN", 3, 1, 1)
    assert model.module(torch.rand(1, 1, 4, 5)).shape == (1, 1, 12, 15)


def test_half_precision_checkpoint_loads_into_a_float32_module(tmp_path):
    sd = {k: v.half() for k, v in espcn_state_dict(2).items()}
    model = load_model(save_pth(tmp_path / "half.pth", sd))
    assert {p.dtype for p in model.module.parameters()} == {torch.float32}
    reference = espcn_reference({k: v.float() for k, v in sd.items()}, image(), 2)
    torch.testing.assert_close(model.module(image()), reference)


def test_unknown_keys_give_an_error_naming_the_file(tmp_path):
    path = save_pth(tmp_path / "mystery.pth", {"foo.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelLoadError, match=r"mystery\.pth.*unknown architecture"):
        load_model(path)


def test_spandrel_architectures_load_when_no_native_one_matches(tmp_path):
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2).eval()
    model = load_model(save_pth(tmp_path / "tiny_esrgan.pth", {"params": net.state_dict()}))
    assert (model.arch, model.scale, model.name) == ("ESRGAN", 2, "tiny_esrgan")
    assert model.tiling == "supported"
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x))


# --- SPAN and Compact: native, equal to the release code (spandrel's copy) ------

def release_span(scale=4, feat=16, seed=0, norm=True):
    """The authors' SPAN (spandrel's copy of the release code) with random weights."""
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(seed)
    net = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=feat, upscale=scale, norm=norm)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    return net.eval()


@pytest.mark.parametrize("scale", [2, 4])
def test_span_release_checkpoint_loads_natively_and_equals_the_release_forward(tmp_path, scale):
    net = release_span(scale)
    model = load_model(save_pth(tmp_path / "span.pth", {"params_ema": net.state_dict()}))
    assert (model.arch, model.scale, model.overlap) == ("SPAN", scale, 32)
    assert model.config == {"scale": scale, "num_in_ch": 3, "num_out_ch": 3, "num_feat": 16, "num_block": 6,
                            "gain": 2, "norm": True}
    x = image(13, 11)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), rtol=1e-4, atol=1e-4)


def test_span_without_normalisation_is_recognised_by_its_marker_buffer(tmp_path):
    net = release_span(2, norm=False)
    model = load_model(save_pth(tmp_path / "span.pth", net.state_dict()))
    assert model.config["norm"] is False
    with torch.no_grad():
        torch.testing.assert_close(model.module(image()), net(image()), rtol=1e-4, atol=1e-4)


def test_span_branches_count_not_a_stale_eval_conv(tmp_path):
    """The release folds eval_conv only when it runs in eval mode, so a file may
    hold an out-of-date one: the branches are folded again on load."""
    net = release_span(2)
    sd = net.state_dict()
    stale = {k: (torch.zeros_like(v) if ".eval_conv." in k else v) for k, v in sd.items()}
    model = load_model(save_pth(tmp_path / "stale.pth", stale))
    with torch.no_grad():
        torch.testing.assert_close(model.module(image()), net(image()), rtol=1e-4, atol=1e-4)


def test_span_folded_conv_equals_its_training_branches_at_the_borders_too():
    from pipeline.models.span import SPAN

    torch.manual_seed(1)
    net = SPAN(scale=2, num_feat=8, num_block=2)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    x = image(9, 6)
    with torch.no_grad():
        branches = net.train()(x)
        folded = net.eval()(x)
    torch.testing.assert_close(folded, branches, rtol=1e-5, atol=1e-5)


def test_plain_span_round_trips_through_save_model(tmp_path):
    from pipeline.models.span import SPAN

    net = SPAN(scale=2, num_feat=8, num_block=2, gain=0).eval()
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(net.state_dict(), path)
    model = load_model(str(path))
    assert (model.arch, model.config["gain"], model.config["num_block"]) == ("SPAN", 0, 2)
    assert not any(".sk." in k for k in model.module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.module(image()), net(image()), rtol=0, atol=0)


@pytest.mark.parametrize("gain", [0, 2])
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("norm", [True, False])
def test_span_started_as_nearest_computes_nearest_upsampling(scale, gain, norm):
    from pipeline.models.span import SPAN

    net = SPAN(scale=scale, num_feat=16, num_block=2, gain=gain, norm=norm)
    net.start_as_nearest()
    x = image(9, 6)
    nearest = F.interpolate(x, scale_factor=scale, mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(net.train()(x), nearest, rtol=0, atol=1e-5)
        torch.testing.assert_close(net.eval()(x), nearest, rtol=0, atol=1e-5)


def test_span_runs_in_fp32_under_auto_precision_on_cpu_but_bf16_when_asked(tmp_path):
    """SPAN carries every pixel through its features (no skip): bf16 rounding cost a trained
    x2 model 0.04 dB on Set5, so `auto` keeps fp32 on a CPU; fp16 on CUDA (10-bit mantissa)."""
    from pipeline.inference.engine import Upscaler, pick_precision

    model = load_model(save_pth(tmp_path / "span.pth", release_span(2).state_dict()))
    assert model.supports_bf16 is False
    assert Upscaler(model, device="cpu").info["precision"] == "fp32"
    assert Upscaler(model, device="cpu", precision="bf16").info["precision"] == "bf16"
    assert pick_precision("auto", torch.device("cuda"), model) == "fp16"


def test_compact_loads_natively_and_equals_spandrel(tmp_path):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    model = load_model(save_pth(tmp_path / "tiny_compact.pth", {"params": net.state_dict()}))
    assert (model.arch, model.scale, model.name, model.overlap) == ("Compact", 2, "tiny_compact", 32)
    assert model.config == {"scale": 2, "num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 2}
    assert type(model.module).__module__ == "pipeline.models.compact.arch"
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), net(x), rtol=0, atol=0)


def test_original_rcan_layout_is_left_to_spandrel_not_mistaken_for_edsr(tmp_path):
    from spandrel.architectures.RCAN import RCAN as SpandrelRCAN

    torch.manual_seed(0)
    net = SpandrelRCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4).eval()
    model = load_model(save_pth(tmp_path / "rcan_original.pth", net.state_dict()))
    assert (model.arch, model.scale, model.overlap, model.supports_half) == ("RCAN", 2, 48, False)
    with torch.no_grad():
        torch.testing.assert_close(model.module(image()), net(image()))


# --- containers and safe loading --------------------------------------------

@pytest.mark.parametrize("wrap", ["params_ema", "params", "state_dict", "model"])
def test_weights_are_found_inside_training_containers(tmp_path, wrap):
    sd = espcn_state_dict(2)
    path = save_pth(tmp_path / "c.pth", {wrap: sd, "iter": 1000})
    model = load_model(path)
    assert (model.arch, model.scale) == ("ESPCN", 2)
    torch.testing.assert_close(model.module(image()), espcn_reference(sd, image(), 2))


def test_ema_weights_are_preferred_over_raw_ones(tmp_path):
    ema, raw = espcn_state_dict(2, seed=1), espcn_state_dict(2, seed=2)
    model = load_model(save_pth(tmp_path / "c.pth", {"params": raw, "params_ema": ema}))
    torch.testing.assert_close(model.module(image()), espcn_reference(ema, image(), 2))


def test_dataparallel_module_prefix_is_stripped_and_non_tensors_dropped(tmp_path):
    sd = espcn_state_dict(3)
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    state_dict, metadata, _ = read_state_dict(save_pth(tmp_path / "dp.pth", {"state_dict": wrapped, "epoch": 7, "opt": [1, 2]}))
    assert set(state_dict) == set(sd)
    assert metadata["epoch"] == "7"


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = save_pth(tmp_path / "evil.pth", {"conv1.weight": torch.zeros(1), "x": Exploit()})
    with pytest.raises(ModelLoadError, match=r"refusing to load .*evil\.pth: it is not a plain weights file.*safetensors"):
        load_model(path)
    assert not marker.exists()


def test_pickled_module_is_refused(tmp_path):
    path = save_pth(tmp_path / "module.pth", nn.Conv2d(3, 3, 3))
    with pytest.raises(ModelLoadError, match="not a plain weights file.*Conv2d"):
        read_state_dict(path)


def test_a_torch_checkpoint_under_a_safetensors_name_still_loads(tmp_path):
    """The bytes decide the reader, not the extension: a renamed .pth loads instead of failing as bad safetensors."""
    sd = espcn_state_dict(2)
    state_dict, _, _ = read_state_dict(save_pth(tmp_path / "renamed.safetensors", sd))
    assert set(state_dict) == set(sd)


# --- locations and round trips ---------------------------------------------

def test_loads_from_memory_filesystem_with_sha256_of_the_bytes():
    buffer = io.BytesIO()
    sd = espcn_state_dict(4)
    torch.save(sd, buffer)
    data = buffer.getvalue()
    fs = fsspec.filesystem("memory")
    fs.pipe("/zoo-test/espcn_x4.pth", data)
    try:
        model = load_model("memory://zoo-test/espcn_x4.pth")
    finally:
        fs.rm("/zoo-test", recursive=True)
    assert (model.name, model.arch, model.scale) == ("espcn_x4", "ESPCN", 4)
    assert model.sha256 == hashlib.sha256(data).hexdigest()
    assert model.source == "memory://zoo-test/espcn_x4.pth"
    torch.testing.assert_close(model.module(image()), espcn_reference(sd, image(), 4))


def test_safetensors_without_extension_is_recognised_by_its_header():
    sd = espcn_state_dict(2)
    fs = fsspec.filesystem("memory")
    fs.pipe("/zoo-test/blob", safetensors.torch.save(sd, metadata={"note": "x"}))
    try:
        state_dict, metadata, _ = read_state_dict("memory://zoo-test/blob")
    finally:
        fs.rm("/zoo-test", recursive=True)
    assert set(state_dict) == set(sd) and metadata == {"note": "x"}


@pytest.mark.parametrize("arch", ["SRCNN", "EDSR", "Compact"])
def test_save_model_round_trips_through_safetensors(tmp_path, arch):
    if arch == "Compact":
        from spandrel.architectures.Compact import Compact

        sd = Compact(num_feat=8, num_conv=2, upscale=2).state_dict()
        extra = {}
    else:
        sd, extra, _, _ = _case(arch, 3)
        extra = {**extra, "res_scale": 0.5} if arch == "EDSR" else extra  # a value only metadata can carry
    first = load_model(save_pth(tmp_path / "first.pth", {**sd, **extra}))
    save_model(first, str(tmp_path / "second.safetensors"))
    _, metadata, _ = read_state_dict(str(tmp_path / "second.safetensors"))
    assert metadata["arch"] == arch and metadata["scale"] == str(first.scale)
    assert json.loads(metadata["config"]) == json.loads(json.dumps(first.config))
    second = load_model(str(tmp_path / "second.safetensors"))
    assert (second.arch, second.scale, second.config) == (first.arch, first.scale, first.config)
    if arch == "EDSR":
        assert second.config["res_scale"] == 0.5
    with torch.no_grad():
        torch.testing.assert_close(second.module(image()), first.module(image()), rtol=0, atol=0)


# --- interpolation and the registry -------------------------------------------

def test_list_models_offers_bicubic_and_lanczos_at_any_scale():
    rows = {row["name"]: row for row in list_models()}
    for name in ("bicubic", "lanczos"):
        assert rows[name]["scale"] == "any" and rows[name]["params"] == 0
        assert set(rows[name]) == {"name", "arch", "scale", "params", "weights"}


@pytest.mark.parametrize("name,kernel", [("bicubic", "cubic"), ("lanczos", "lanczos3")])
def test_interpolation_models_resize_by_the_requested_scale(name, kernel):
    model = load_model(name, scale=3)
    assert (model.arch, model.scale, model.params, model.sha256) == (name, 3, 0, None)
    x = image()
    torch.testing.assert_close(model.module(x), resize_torch(x, (21, 15), kernel=kernel))
    assert load_model(name).scale == 4


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ModelLoadError, match=r"unknown model 'bicubc'.*bicubic, lanczos"):
        load_model("bicubc")


def test_scale_argument_is_ignored_for_models_with_weights(tmp_path):
    model = load_model(save_pth(tmp_path / "e.pth", espcn_state_dict(2)), scale=4)
    assert model.scale == 2


# --- tiling: the recommended overlap is enough --------------------------------

def tiled(module, x, scale, tile, overlap):
    """What the engine does: plan tiles, run each, blend with the window."""
    _, c, h, w = x.shape
    stitcher = Stitcher(c, h, w, scale, overlap)
    with torch.no_grad():
        for t in plan_tiles(h, w, tile, overlap):
            stitcher.add(t, module(x[:, :, t.y0 : t.y1, t.x0 : t.x1])[0])
    return stitcher.result()[None]


@pytest.mark.parametrize("spec", ["bicubic", "lanczos", "SRCNN-2", "SRCNN-3", "SRCNN-4", "ESPCN-3"])
def test_shallow_models_tile_exactly_with_their_recommended_overlap(tmp_path, spec):
    """For these the receptive field fits in the quarter of the overlap that
    the blending window discards, so tiles equal the whole image."""
    if spec in ("bicubic", "lanczos"):
        model = load_model(spec, scale=2)
    else:
        arch, scale = spec.split("-")
        sd, extra, _, _ = _case(arch, int(scale))
        model = load_model(save_pth(tmp_path / "m.pth", {**sd, **extra}))
    x = image(2 * model.overlap + 11, 2 * model.overlap + 5)
    with torch.no_grad():
        whole = model.module(x)
    torch.testing.assert_close(tiled(model.module, x, model.scale, 2 * model.overlap, model.overlap), whole, rtol=0, atol=1e-6)


# --- the real third-party checkpoint ------------------------------------------

needs_animevideo = pytest.mark.skipif(not ANIMEVIDEO.exists(), reason=f"{ANIMEVIDEO} is absent (../shared not available)")


def psnr(a, b):
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


@pytest.mark.shared
@needs_animevideo
def test_realesrgan_animevideo_v3_loads_natively_equals_spandrel_and_upscales():
    from spandrel import ModelLoader

    model = load_model(str(ANIMEVIDEO))
    assert model.source == str(ANIMEVIDEO) and type(model.module).__name__ == "SRVGGNetCompact"
    assert (model.arch, model.scale, model.in_channels, model.out_channels) == ("Compact", 4, 3, 3)
    assert model.sha256.startswith("4e1e09ba96d0")
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 20), indexing="ij")
    x = torch.stack([0.2 + 0.6 * yy, 0.5 + 0.3 * torch.sin(6 * xx), (yy > 0.5).float() * 0.7 + 0.1])[None]
    with torch.no_grad():
        out = model.module(x)
    assert out.shape == (1, 3, 96, 80)
    with torch.no_grad():
        assert torch.equal(out, ModelLoader().load_from_file(str(ANIMEVIDEO)).model.eval()(x))
    assert -0.1 < out.min() and out.max() < 1.1
    upscaled = resize_torch(x, (96, 80))
    noise = torch.rand(out.shape, generator=torch.Generator().manual_seed(0))
    assert psnr(out, upscaled) > psnr(noise, upscaled) + 10


@pytest.mark.shared
@needs_animevideo
def test_realesrgan_tiles_within_1_of_255_with_the_recommended_overlap_but_not_with_16():
    from PIL import Image

    kodim = SHARED / "data" / "kodak" / "kodim01.png"
    if not kodim.exists():
        pytest.skip(f"{kodim} is absent")
    model = load_model(str(ANIMEVIDEO))
    crop = np.array(Image.open(kodim).convert("RGB"))[100:196, 200:296]
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = model.module(x)
    error = (tiled(model.module, x, 4, 64, model.overlap) - whole).abs().max()
    assert error < 1 / 255
    assert (tiled(model.module, x, 4, 64, 16) - whole).abs().max() > 1 / 255
