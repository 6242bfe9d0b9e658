"""The engine: tiling-independent output, channel layouts, scales, precision, OOM."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.inference.engine import Upscaler
from pipeline.models import LoadedModel, load_model
from pipeline.models.edsr.arch import EDSR
from pipeline.inference.resize import resize_torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANIME = SHARED / "weights" / "realesr-animevideov3.pth"


def tiny_edsr(scale: int) -> LoadedModel:
    """A small EDSR (2 blocks x 16 features) with fixed random weights.
    Its receptive field is 8 input pixels from the centre, so an overlap of 32
    (a zero-weight band of 8) must make tiling invisible."""
    torch.manual_seed(scale)
    module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, scale=scale)
    params = sum(p.numel() for p in module.parameters())
    return LoadedModel(name=f"tiny-edsr-x{scale}", arch="EDSR", module=module, scale=scale,
                       in_channels=3, out_channels=3, overlap=32, params=params)


def photo(h: int, w: int, c: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth image with edges: closer to a photograph than noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [np.sin(6 * xx + k) * np.cos(4 * yy - k) * 0.4 + 0.5 + 0.05 * rng.standard_normal((h, w))
              for k in range(c)]
    unit = np.clip(np.stack(planes, axis=2), 0, 1)
    if dtype == np.float32:
        return unit.astype(np.float32)
    return np.rint(unit * np.iinfo(dtype).max).astype(dtype)


class FunctionModule(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def function_model(fn, scale=2, **kw) -> LoadedModel:
    return LoadedModel(name="fn", arch="test", module=FunctionModule(fn), scale=scale,
                       in_channels=kw.pop("in_channels", 3), out_channels=3, **kw)


def nearest(x, s=2):
    return F.interpolate(x, scale_factor=s, mode="nearest")


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(97, 75), (70, 131), (13, 9)])
def test_tiled_output_equals_whole_image_output_within_one_level(scale, size):
    model = tiny_edsr(scale)
    image = photo(*size, seed=scale)
    whole = Upscaler(model, tile=0).upscale([image])[0]
    tiling = Upscaler(model, tile=64, overlap=32)
    tiled = tiling.upscale([image])[0]
    assert tiling.stats.tiles == {(97, 75): 6, (70, 131): 8, (13, 9): 1}[size]  # odd, non-square; and smaller than a tile
    small_tiles = Upscaler(model, tile=24, overlap=12).upscale([image])[0]
    assert whole.shape == (size[0] * scale, size[1] * scale, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    # With less overlap than the receptive field the result differs a little, but never by a seam:
    assert np.abs(small_tiles.astype(int) - whole.astype(int)).mean() < 2


def test_on_a_cpu_every_tile_runs_in_its_own_forward_pass_and_matches_the_image_alone():
    """batch_size applies on CUDA only: oneDNN computes a tile alone and in a
    batch with different kernels, so batching would tie an image to its neighbours."""
    model = tiny_edsr(2)
    images = [photo(40, 40, seed=i) for i in range(3)]
    upscaler = Upscaler(model, tile=24, overlap=8, batch_size=8, device="cpu")
    together = upscaler.upscale(images)
    assert upscaler.stats.tiles == 3 * 4 and upscaler.stats.batches == 12
    alone = [Upscaler(model, tile=24, overlap=8, device="cpu").upscale([img])[0] for img in images]
    for a, b in zip(together, alone):
        assert np.array_equal(a, b)


def test_gray_image_runs_as_three_equal_channels_and_comes_back_single_channel():
    model = tiny_edsr(2)
    gray = photo(20, 24, c=1)
    out = Upscaler(model, tile=0).upscale([gray])[0]
    rgb_out = Upscaler(model, tile=0).upscale([np.repeat(gray, 3, axis=2)])[0]
    assert out.shape == (40, 48, 1) and out.dtype == np.uint8
    expected = np.rint(rgb_out.astype(np.float64).mean(axis=2, keepdims=True))
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_alpha_is_resized_separately_and_does_not_change_the_colours():
    model = tiny_edsr(2)
    rgba = photo(20, 24, c=4)
    out = Upscaler(model, tile=0).upscale([rgba])[0]
    rgb_only = Upscaler(model, tile=0).upscale([rgba[..., :3]])[0]
    assert out.shape == (40, 48, 4)
    assert np.array_equal(out[..., :3], rgb_only)
    alpha = torch.from_numpy(rgba[..., 3].astype(np.float64) / 255)[None, None]
    expected = np.rint(resize_torch(alpha, (40, 48)).clamp(0, 1)[0, 0].numpy() * 255)
    assert np.abs(out[..., 3].astype(int) - expected).max() <= 1


def test_sixteen_bit_stays_sixteen_bit_with_its_full_range():
    model = function_model(nearest)
    image = photo(10, 12, dtype=np.uint16)
    out = Upscaler(model, tile=0).upscale([image])[0]
    assert out.dtype == np.uint16
    assert np.array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))


def test_float_image_outside_unit_range_is_mapped_and_mapped_back():
    model = function_model(nearest)
    image = (photo(8, 8, dtype=np.float32) * 3000 - 500).astype(np.float32)
    out = Upscaler(model, tile=0).upscale([image])[0]
    assert out.dtype == np.float32
    assert np.allclose(out, image.repeat(2, axis=0).repeat(2, axis=1), atol=1e-3)


@pytest.mark.parametrize("target,expected", [(3, (60, 75)), (8, (160, 200)), (2.5, (50, 62)), (1, (20, 25))])
def test_output_scale_may_differ_from_the_model_scale(target, expected):
    model = function_model(lambda x: nearest(x, 4), scale=4)
    upscaler = Upscaler(model, tile=0)
    out = upscaler.upscale([photo(20, 25)], target)[0]
    assert out.shape[:2] == expected
    assert upscaler.stats.batches == (2 if target == 8 else 1)


def test_interpolation_models_resize_straight_to_the_target():
    model = load_model("bicubic", scale=4)
    image = photo(20, 25)
    out = Upscaler(model).upscale([image], 3)[0]
    x = torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)[None]
    expected = np.rint(resize_torch(x, (60, 75)).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(out.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("name", ["bicubic", "lanczos"])
def test_images_of_one_layout_resized_together_equal_each_resized_alone(name):
    """A group's equal-sized images share the resize's passes; the values are those of one at a time."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (20, 25, 3), dtype=np.uint8) for _ in range(3)]
    images += [rng.integers(0, 256, (20, 25, 4), dtype=np.uint8),  # same size, other channels
               rng.integers(0, 65536, (20, 25, 3), dtype=np.uint16),  # same size, other dtype
               rng.integers(0, 256, (9, 7, 1), dtype=np.uint8)]
    images.insert(2, rng.integers(0, 256, (9, 7, 1), dtype=np.uint8))
    upscaler = Upscaler(load_model(name, scale=2))
    together = upscaler.upscale(images, 2)
    alone = [upscaler.upscale([image], 2)[0] for image in images]
    assert [o.shape for o in together] == [(2 * i.shape[0], 2 * i.shape[1], i.shape[2]) for i in images]
    assert all(o.dtype == i.dtype and np.array_equal(o, a) for o, a, i in zip(together, alone, images))


def test_single_channel_model_runs_each_colour_plane():
    seen = []
    model = function_model(lambda x: seen.append(x.shape[1]) or nearest(x), in_channels=1)
    out = Upscaler(model, tile=0).upscale([photo(6, 6)])[0]
    assert set(seen) == {1} and out.shape == (12, 12, 3)


def test_half_precision_tile_with_inf_falls_back_to_fp32():
    model = function_model(lambda x: nearest(x) * 70000.0 / 70000.0)
    upscaler = Upscaler(model, tile=0, precision="fp16", device="cpu")
    out = upscaler.upscale([photo(8, 8)])[0]
    assert upscaler.stats.fp32_fallback_tiles == 1
    assert np.array_equal(out, photo(8, 8).repeat(2, axis=0).repeat(2, axis=1))


def test_half_precision_tiles_with_nan_fall_back_to_fp32_and_the_others_do_not():
    """Only the tiles whose half-precision output holds a NaN are redone in fp32."""
    def nan_in_half_on_the_left(x):
        out = nearest(x)
        if x.dtype != torch.float32 and x[0, 0, 0, 0] < 0.5:
            out[:, :, 1, 1] = float("nan")
        return out
    image = photo(16, 32)
    image[:, :16] = 50  # the left tile starts dark, the right bright
    image[:, 16:] = 200
    upscaler = Upscaler(function_model(nan_in_half_on_the_left), tile=16, overlap=0, precision="bf16", device="cpu")
    out = upscaler.upscale([image])[0]
    assert upscaler.stats.tiles == 2 and upscaler.stats.fp32_fallback_tiles == 1
    assert np.array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))


def test_bf16_output_is_close_to_fp32():
    model = tiny_edsr(2)
    image = photo(16, 16)
    fp32 = Upscaler(model, tile=0, precision="fp32").upscale([image])[0]
    bf16 = Upscaler(model, tile=0, precision="bf16").upscale([image])[0]
    assert np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 3


def test_out_of_memory_halves_the_tile_and_retries():
    def fragile(x):
        if x.shape[-1] * x.shape[-2] > 60 * 60:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return nearest(x)

    model = function_model(fragile, overlap=4)
    upscaler = Upscaler(model)  # auto tile: the whole image fits the budget, the "device" disagrees
    image = photo(100, 90)
    out = upscaler.upscale([image])[0]
    assert upscaler.stats.oom_retries == 1
    assert np.array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))


def test_size_requirements_are_met_by_padding_and_the_output_cropped():
    shapes = []
    model = function_model(lambda x: shapes.append(tuple(x.shape[-2:])) or nearest(x), size_multiple=8)
    image = photo(13, 21)
    out = Upscaler(model, tile=0).upscale([image])[0]
    assert shapes == [(16, 24)] and out.shape == (26, 42, 3)
    assert np.array_equal(out, image.repeat(2, axis=0).repeat(2, axis=1))


@pytest.mark.skipif(not ANIME.exists(), reason="needs ../shared/weights/realesr-animevideov3.pth")
def test_third_party_anime_model_runs_tiled_through_the_engine():
    model = load_model(str(ANIME))
    image = photo(40, 52)
    whole = Upscaler(model, tile=0).upscale([image])[0]
    tiled = Upscaler(model, tile=48, overlap=20).upscale([image])[0]
    assert whole.shape == (160, 208, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).mean() < 1.0
