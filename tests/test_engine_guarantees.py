"""What the engine guarantees a caller: the caller's model is left alone, the
time limit holds everywhere, the overlap never shrinks silently, an image's
output depends on that image and the settings only, x1 models work, and the
device is picked in one place."""

import time

import numpy as np
import pytest
import torch

from pipeline.inference import engine
from pipeline.inference.engine import (
    CPU_MEMORY_BUDGET,
    ImageTimeLimitError,
    Upscaler,
    is_out_of_memory,
    memory_budget,
    model_passes,
    pick_device,
)
from pipeline.inference.resize import resize_torch
from pipeline.inference.tiling import plan_tiles
from pipeline.models import LoadedModel, load_model
from pipeline.models.espcn.arch import ESPCN
from tests.test_engine import function_model, nearest, photo, tiny_edsr


def tiny_espcn(scale: int = 2) -> LoadedModel:
    torch.manual_seed(10 + scale)
    module = ESPCN(scale=scale, num_feat=(16, 8))
    return LoadedModel(name=f"tiny-espcn-x{scale}", arch="ESPCN", module=module, scale=scale,
                       in_channels=3, out_channels=3, overlap=8)


def x1_model() -> LoadedModel:
    """A restoration-style model: a seeded 3x3 convolution, output the input's size."""
    torch.manual_seed(1)
    module = torch.nn.Conv2d(3, 3, 3, padding=1)
    return LoadedModel(name="tiny-x1", arch="test-x1", module=module, scale=1, in_channels=3, out_channels=3,
                       overlap=4)


# ------------------------------------------------------------ the caller's model


@pytest.mark.skipif(not engine.cpu_has_native_bf16(), reason="this CPU has no native bf16: auto is fp32 throughout")
def test_auto_precision_runs_8_bit_images_in_bf16_and_deeper_ones_in_fp32_with_fp32_weights():
    """bf16 keeps 8 significant bits: fine for 8-bit pixels, not for 16-bit ones, whose low
    bits it would lose; those run in fp32, with the model's own fp32 weights."""
    model = tiny_edsr(2)
    auto, fp32, bf16 = (Upscaler(model, tile=0, precision=p, device="cpu") for p in ("auto", "fp32", "bf16"))
    deep, shallow = photo(16, 20, dtype=np.uint16), photo(16, 20)
    out_deep, out_shallow = auto.upscale([deep, shallow])
    assert np.array_equal(out_deep, fp32.upscale([deep])[0])
    assert np.array_equal(out_shallow, bf16.upscale([shallow])[0])
    assert (auto.precision_for(np.uint8), auto.precision_for(np.uint16), auto.precision_for(np.float32)) == \
        ("bf16", "fp32", "fp32")
    assert bf16.precision_for(np.uint16) == "bf16"  # asked for explicitly: as asked


def test_engines_of_two_precisions_share_one_loaded_model_and_leave_it_as_it_was():
    model = tiny_edsr(2)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    image = photo(16, 20)
    fp32 = Upscaler(model, tile=0, precision="fp32", device="cpu")
    bf16 = Upscaler(model, tile=0, precision="bf16", device="cpu")
    out32, out16 = fp32.upscale([image])[0], bf16.upscale([image])[0]
    assert np.array_equal(out32, Upscaler(tiny_edsr(2), tile=0, precision="fp32", device="cpu").upscale([image])[0])
    assert np.array_equal(out16, Upscaler(tiny_edsr(2), tile=0, precision="bf16", device="cpu").upscale([image])[0])
    assert not np.array_equal(out32, out16)
    params = list(model.module.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" and p.requires_grad for p in params)
    assert model.module.training  # .eval() went to the engine's copy
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    assert fp32.module is not model.module and bf16.module is not fp32.module


# ------------------------------------------------------------ the time limit


def test_the_deadline_is_an_argument_and_is_checked_before_the_first_forward_pass():
    calls = []
    model = function_model(lambda x: calls.append(1) or nearest(x))
    upscaler = Upscaler(model, tile=0)
    assert not hasattr(upscaler, "deadline")
    with pytest.raises(ImageTimeLimitError, match="before a forward pass"):
        upscaler.upscale([photo(8, 8)], deadline=time.monotonic() - 1)
    assert calls == []
    assert upscaler.upscale([photo(8, 8)], deadline=time.monotonic() + 60)[0].shape == (16, 16, 3)


def test_the_deadline_is_checked_after_a_forward_pass_even_the_only_one():
    model = function_model(lambda x: time.sleep(0.3) or nearest(x))
    with pytest.raises(ImageTimeLimitError, match="after a forward pass"):
        Upscaler(model, tile=0).upscale([photo(8, 8)], deadline=time.monotonic() + 0.1)


def test_a_4000px_image_through_bicubic_stops_at_its_deadline_inside_the_resize():
    image = np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
    upscaler = Upscaler(load_model("bicubic", scale=2), device="cpu")
    started = time.monotonic()
    with pytest.raises(ImageTimeLimitError, match="between bands"):
        upscaler.upscale([image], deadline=started + 1.0)
    assert time.monotonic() - started < 5.0


def test_the_resize_to_the_target_after_the_model_checks_the_deadline(monkeypatch):
    """x3 from an x4 model: one pass, then a downscale, which stops in its bands."""
    passes = []
    model = function_model(lambda x: passes.append(1) or nearest(x, 4), scale=4)
    real = engine.resize_torch

    def slow_resize(*args, check=None, **kw):
        time.sleep(0.3)
        return real(*args, check=check, **kw)

    monkeypatch.setattr(engine, "resize_torch", slow_resize)
    with pytest.raises(ImageTimeLimitError, match="resize to the target"):
        Upscaler(model, tile=0).upscale([photo(20, 20)], 3, deadline=time.monotonic() + 0.15)
    assert passes == [1]


# ------------------------------------------------------------ tile and overlap


@pytest.mark.parametrize("tile,overlap", [(48, 32), (10, 8)])
def test_an_explicit_tile_that_cannot_hold_the_overlap_is_refused_with_both_numbers(tile, overlap):
    with pytest.raises(ValueError) as error:
        Upscaler(tiny_edsr(2), tile=tile, overlap=overlap)
    message = str(error.value)
    assert f"tile {tile}" in message and f"overlap {overlap}" in message and f"tile >= {2 * overlap}" in message


def test_an_explicit_tile_below_the_models_minimum_size_is_refused():
    model = function_model(nearest, min_size=64, overlap=8)
    with pytest.raises(ValueError, match="tile 48 is smaller than the 64 pixels"):
        Upscaler(model, tile=48)
    assert Upscaler(model, tile=64).tiling_for(100, 100) == (64, 8)


def test_an_automatic_tile_grows_to_hold_the_overlap():
    model = function_model(nearest, overlap=40)
    upscaler = Upscaler(model, memory_budget_bytes=1)  # the budget alone would give a 0 px tile
    assert upscaler.auto_tile() == 80
    assert upscaler.tiling_for(300, 300) == (80, 40)
    upscaler.upscale([photo(300, 300)])
    assert upscaler.stats.tiles == len(plan_tiles(300, 300, 80, 40))


def test_out_of_memory_halving_stops_at_the_smallest_tile_that_holds_the_overlap():
    seen = []

    def fragile(x):
        seen.append(tuple(x.shape[-2:]))
        if x.shape[-1] * x.shape[-2] > 40 * 40:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return nearest(x)

    upscaler = Upscaler(function_model(fragile, overlap=24))  # smallest tile: 2 x 24
    with pytest.raises(RuntimeError, match="could not hold the overlap 24") as error:
        upscaler.upscale([photo(200, 200)])
    assert is_out_of_memory(error.value)
    assert min(min(shape) for shape in seen) == 48
    assert upscaler.stats.history[-1].endswith("retrying at 48")
    assert upscaler.tiling_for(200, 200) == (48, 24)  # what it ran with last


def test_info_reports_the_resolved_tile_setting_and_overlap():
    model = tiny_edsr(2)
    assert Upscaler(model).info["tile"] == "auto" and Upscaler(model).info["overlap"] == 32
    info = Upscaler(model, tile=64, overlap=20).info
    assert info["tile"] == 64 and info["overlap"] == 20


# ------------------------------------------------------------ independent of neighbours and of the moment


def test_the_automatic_tile_does_not_depend_on_free_memory(monkeypatch):
    import os

    pages = iter(range(10**6, 10**7, 12345))
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: next(pages) if name == "SC_AVPHYS_PAGES" else real(name))
    model = tiny_edsr(4)
    tiles = {Upscaler(model, device="cpu").auto_tile() for _ in range(3)}
    assert len(tiles) == 1
    assert memory_budget(torch.device("cpu")) == CPU_MEMORY_BUDGET
    upscaler = Upscaler(model, device="cpu")
    expected = max(upscaler.min_tile, int((CPU_MEMORY_BUDGET / upscaler.bytes_per_pixel) ** 0.5))
    assert tiles == {expected}
    assert Upscaler(model, memory_budget_bytes=100 * 100 * upscaler.bytes_per_pixel).auto_tile() == 100


@pytest.mark.parametrize("make", [tiny_espcn, lambda: tiny_edsr(2)], ids=["espcn", "edsr"])
def test_an_images_output_bytes_do_not_depend_on_its_neighbours_or_the_batch_size(make):
    model = make()
    overlap = 8
    # An automatic tile of 32 px: images with an area above 32 x 32 are tiled, the others run whole.
    budget = 32 * 32 * Upscaler(model).bytes_per_pixel
    sizes = [(50, 70), (20, 30), (33, 90), (32, 32), (10, 100), (50, 70)]
    images = [photo(h, w, dtype=np.float32, seed=i) for i, (h, w) in enumerate(sizes)]

    def engine_(**kw):
        return Upscaler(model, overlap=overlap, memory_budget_bytes=budget, device="cpu", **kw)

    probe = engine_()
    tilings = [probe.tiling_for(h, w) for h, w in sizes]
    assert tilings == [(32, 8), (0, 0), (32, 8), (0, 0), (0, 0), (32, 8)]
    alone = [engine_().upscale([img])[0] for img in images]
    for batch_size in (1, 8):
        upscaler = engine_(batch_size=batch_size)
        together = upscaler.upscale(images)
        for a, b in zip(alone, together):
            assert a.dtype == np.float32 and np.array_equal(a, b)
        assert upscaler.stats.tiles == sum(len(plan_tiles(h, w, *t)) for (h, w), t in zip(sizes, tilings))


def test_explicit_tiling_is_whole_for_images_inside_one_tile():
    upscaler = Upscaler(tiny_edsr(2), tile=64, overlap=16)
    assert upscaler.tiling_for(64, 40) == (0, 0)
    assert upscaler.tiling_for(65, 40) == (64, 16)
    assert Upscaler(tiny_edsr(2), tile=0).tiling_for(5000, 5000) == (0, 0)


# ------------------------------------------------------------ scale-1 models and pass counts


@pytest.mark.parametrize("model_scale,target,passes", [
    (2, 8, 3), (4, 8, 2), (4, 16, 2), (4, 17, 3), (4, 3, 1), (4, 2.5, 1), (4, 0.5, 1), (3, 9, 2),
    (1, 1, 1), (1, 2, 1), (1, 0.5, 1),
])  # fmt: skip
def test_model_passes_is_the_smallest_count_that_reaches_the_target(model_scale, target, passes):
    assert model_passes(model_scale, target) == passes


def test_a_scale_one_model_runs_once_then_bicubic_resizes_to_the_target():
    model = x1_model()
    image = photo(20, 26)
    same = Upscaler(model, device="cpu", precision="fp32")  # compared with the model's fp32 output
    restored = same.upscale([image], 1)[0]
    assert restored.shape == (20, 26, 3) and same.stats.batches == 1
    x = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        direct = model.module(x)  # resized before it is clamped, as any model's output
    assert np.array_equal(restored, np.rint(direct.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255))
    double = Upscaler(model, device="cpu", precision="fp32")
    out = double.upscale([image], 2)[0]
    assert out.shape == (40, 52, 3) and double.stats.batches == 1
    expected = resize_torch(direct.double(), (40, 52)).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.astype(int) - np.rint(expected * 255)).max() <= 1
    assert Upscaler(model).upscale([image], 0.5)[0].shape == (10, 13, 3)


# ------------------------------------------------------------ the device


def test_pick_device_is_the_one_place_a_device_name_is_resolved():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
        with pytest.raises(ValueError, match="CUDA"):
            Upscaler(tiny_edsr(2), device="cuda:0")


# ------------------------------------------------------------ banded interpolation


def test_banded_interpolation_gives_the_same_bytes_whatever_the_band_size(monkeypatch):
    from pipeline.inference import resize

    image = photo(61, 47, c=4)
    upscaler = Upscaler(load_model("bicubic", scale=2), device="cpu")
    default = upscaler.upscale([image], 2.5)[0]
    monkeypatch.setattr(resize, "_BAND_ELEMENTS", 500)  # a few rows per band
    assert np.array_equal(upscaler.upscale([image], 2.5)[0], default)
    x = torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)[None]
    expected = np.rint(resize_torch(x, (152, 118)).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255)
    assert np.abs(default.astype(int) - expected).max() <= 1
