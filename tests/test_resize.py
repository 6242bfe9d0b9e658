"""Specification of the MATLAB-compatible resize (pipeline.inference.resize)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.inference.resize import contributions, imresize, resize_torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
SET5 = ["baby", "bird", "butterfly", "head", "woman"]
SET14 = [
    "baboon", "barbara", "bridge", "coastguard", "comic", "face", "flowers",
    "foreman", "lenna", "man", "monarch", "pepper", "ppt3", "zebra",
]  # fmt: skip
needs_shared = pytest.mark.skipif(not DATA.is_dir(), reason=f"reference data {DATA} not present (../shared)")


def load_pair(dataset: str, name: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """HR cropped to a multiple of `scale` and the reference MATLAB LR image."""
    from PIL import Image

    hr = np.asarray(Image.open(DATA / dataset / "HR" / f"{name}.png"))
    h, w = hr.shape[:2]
    lr = np.asarray(Image.open(DATA / dataset / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png"))
    return hr[: h - h % scale, : w - w % scale], lr


def random_image(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True, dtype=dtype)
    return rng.random(shape).astype(dtype)


# ---------------------------------------------------------------- reference data


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", SET5)
def test_set5_downscale_is_bit_exact_with_matlab(name, scale):
    hr, lr = load_pair("set5", name, scale)
    assert np.array_equal(imresize(hr, 1 / scale), lr)


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", SET14)
def test_set14_downscale_is_bit_exact_including_single_channel_bridge(name, scale):
    hr, lr = load_pair("set14", name, scale)
    assert np.array_equal(imresize(hr, 1 / scale), lr)


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("name", SET5)
def test_set5_x8_equals_float_resize_rounded_once(name):
    # X8 was made without intermediate rounding: the float path, rounded at
    # the end, reproduces it; the uint8 path (rounded per pass) does not.
    hr, lr = load_pair("set5", name, 8)
    once = np.clip(np.round(imresize(hr.astype(np.float64), 1 / 8)), 0, 255).astype(np.uint8)
    assert np.array_equal(once, lr)
    assert not np.array_equal(imresize(hr, 1 / 8), lr)


# ---------------------------------------------------------------- MATLAB semantics


def test_contributions_for_x2_upscale_have_keys_cubic_weights_and_mirrored_border():
    indices, weights = contributions(4, 8, 2.0, "cubic", True)
    # First output pixel sits at input position 0.75 (1-based); taps at
    # 1-based -1, 0, 1, 2 mirror to 0-based 1, 0, 0, 1.
    assert indices[0].tolist() == [1, 0, 0, 1]
    assert weights[0].tolist() == [-0.0234375, 0.2265625, 0.8671875, -0.0703125]


@pytest.mark.parametrize("kernel, taps", [("linear", 2), ("cubic", 4), ("lanczos2", 4), ("lanczos3", 6)])
def test_upscale_kernel_support_gives_expected_tap_count(kernel, taps):
    _, weights = contributions(20, 40, 2.0, kernel, True)
    assert np.count_nonzero(weights[10]) == taps


def test_antialiased_x4_downscale_widens_cubic_kernel_to_16_taps():
    _, weights = contributions(64, 16, 0.25, "cubic", True)
    assert np.count_nonzero(weights[8]) == 16
    _, narrow = contributions(64, 16, 0.25, "cubic", False)
    assert np.count_nonzero(narrow[8]) == 4


@pytest.mark.parametrize("kernel", ["cubic", "lanczos2", "lanczos3", "linear"])
@pytest.mark.parametrize("scale", [0.25, 1 / 3, 1.5, 2])
def test_constant_image_stays_constant_for_every_kernel(kernel, scale):
    img = np.full((13, 17, 3), 200, dtype=np.uint8)
    out = imresize(img, scale, kernel=kernel)
    assert np.all(out == 200)


def test_output_size_is_ceil_of_input_times_scale():
    assert imresize(np.zeros((10, 7), np.uint8), 0.5).shape == (5, 4)
    assert imresize(np.zeros((10, 7, 3), np.uint8), 1 / 3).shape == (4, 3, 3)


def test_output_size_argument_sets_height_and_width():
    assert imresize(np.zeros((10, 7), np.float32), output_size=(3, 20)).shape == (3, 20)


def test_cubic_reproduces_a_linear_ramp_away_from_the_border():
    ramp = np.tile(np.arange(32, dtype=np.float64), (32, 1))
    out = imresize(ramp, 2)
    # Output column j (0-based) samples input position (j + 0.5) / 2 - 0.5.
    expected = (np.arange(64) + 0.5) / 2 - 0.5
    assert np.allclose(out[:, 8:-8], expected[8:-8], atol=1e-12)


def tap_by_tap(img: np.ndarray, axis: int, out_length: int, kernel: str) -> np.ndarray:
    """One float64 pass the way MATLAB's imresizemex adds it: each output value the sum of its
    taps, weight times input, in tap order."""
    scale = out_length / img.shape[axis]
    indices, weights = contributions(img.shape[axis], out_length, scale, kernel, True)
    src = np.moveaxis(img.astype(np.float64), axis, 0)
    out = np.zeros((out_length, *src.shape[1:]))
    for i in range(out_length):
        for t in range(indices.shape[1]):
            out[i] = out[i] + weights[i, t] * src[indices[i, t]]
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize("kernel", ["cubic", "lanczos3", "linear"])
@pytest.mark.parametrize("in_hw, out_hw", [((37, 23), (9, 6)), ((11, 17), (30, 41)), ((64, 48), (16, 96)), ((1, 9), (3, 2))])
def test_each_pass_adds_the_taps_in_order_bit_for_bit(kernel, in_hw, out_hw):
    """Float results equal a tap-by-tap sum exactly (the products are MATLAB's, in its order)."""
    img = random_image((*in_hw, 3), np.float64, seed=3)
    rows_first = out_hw[0] / in_hw[0] <= out_hw[1] / in_hw[1]
    first, second = (0, 1) if rows_first else (1, 0)
    expected = tap_by_tap(tap_by_tap(img, first, out_hw[first], kernel), second, out_hw[second], kernel)
    assert np.array_equal(imresize(img, output_size=out_hw, kernel=kernel), expected)


def test_integer_passes_run_smaller_scale_first_with_rounding_between():
    img = random_image((32, 32, 3))
    out = imresize(img, output_size=(16, 64))
    rows_first = imresize(imresize(img, output_size=(16, 32)), output_size=(16, 64))
    cols_first = imresize(imresize(img, output_size=(32, 64)), output_size=(16, 64))
    assert np.array_equal(out, rows_first)
    assert not np.array_equal(out, cols_first)


def test_uint16_result_is_rounded_and_clipped_to_its_range():
    img = np.zeros((8, 8), np.uint16)
    img[:, 4:] = 65535
    out = imresize(img, 2)
    assert out.dtype == np.uint16
    # Cubic overshoots at the step; the overshoot is clipped, not wrapped.
    assert out.max() == 65535 and out.min() == 0
    unclipped = imresize(img.astype(np.float64), 2)
    assert unclipped.max() > 65535 and unclipped.min() < 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_input_keeps_its_dtype_and_is_not_rounded(dtype):
    img = random_image((12, 12), dtype) * 255
    out = imresize(img, 0.5)
    assert out.dtype == dtype
    assert not np.array_equal(out, np.round(out))


def mid_range_image(shape, seed=0) -> np.ndarray:
    """uint8 noise in 40..215, so that no cubic overshoot reaches 0 or 255 and
    integer results differ from float ones by rounding alone."""
    return np.random.default_rng(seed).integers(40, 215, shape, endpoint=True, dtype=np.uint8)


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 2, 3])
def test_per_pass_rounding_moves_values_by_at_most_one_level(scale):
    img = mid_range_image((40, 30, 3))
    exact = imresize(img.astype(np.float64), scale)
    assert np.abs(imresize(img, scale) - np.round(exact)).max() <= 1


def test_imresize_requires_exactly_one_of_scale_and_output_size():
    img = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError):
        imresize(img)
    with pytest.raises(ValueError):
        imresize(img, 2, output_size=(8, 8))


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="kernel"):
        imresize(np.zeros((4, 4), np.uint8), 2, kernel="box")


# ---------------------------------------------------------------- torch version


@pytest.mark.parametrize("kernel", ["cubic", "lanczos2", "lanczos3", "linear"])
@pytest.mark.parametrize("out_hw", [(10, 13), (60, 80), (45, 26), (17, 120)])
def test_resize_torch_float64_equals_imresize(kernel, out_hw):
    img = random_image((30, 40, 3), np.float64)
    expected = imresize(img, output_size=out_hw, kernel=kernel)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    got = resize_torch(x, out_hw, kernel=kernel)[0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() < 1e-10


def test_resize_torch_rounded_matches_uint8_imresize_within_one_level():
    img = mid_range_image((48, 36, 3))
    for out_hw in [(24, 18), (16, 12), (96, 72), (70, 50)]:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].double()
        got = resize_torch(x, out_hw).round().clamp(0, 255)[0].permute(1, 2, 0).numpy()
        assert np.abs(got - imresize(img, output_size=out_hw)).max() <= 1


def test_resize_torch_keeps_dtype_and_batch_shape():
    x = torch.rand(2, 4, 20, 30, dtype=torch.float32)
    out = resize_torch(x, (10, 45), kernel="lanczos3")
    assert out.shape == (2, 4, 10, 45) and out.dtype == torch.float32


def test_resize_torch_is_differentiable():
    x = torch.rand(1, 1, 9, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize_torch(t, (5, 12)), (x,))


def test_resize_torch_without_antialias_differs_when_downscaling():
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    assert not torch.allclose(resize_torch(x, (8, 8)), resize_torch(x, (8, 8), antialias=False))


def test_resize_torch_rejects_integer_tensors():
    with pytest.raises(ValueError):
        resize_torch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), (8, 8))


def test_resize_torch_reuses_cached_taps():
    from pipeline.inference.resize import _taps

    x = torch.rand(1, 3, 21, 23)
    resize_torch(x, (42, 46))
    hits = _taps.cache_info().hits
    resize_torch(x, (42, 46))
    assert _taps.cache_info().hits == hits + 2


def test_resize_torch_of_a_1_by_65537_image_is_banded_and_bit_identical_to_imresize():
    """A dense weight matrix for this width would be 65537 x 131074 float64: 64 GiB."""
    img = random_image((1, 65537, 3), np.float64)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    got = resize_torch(x, (2, 131074))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, imresize(img, output_size=(2, 131074)))


@pytest.mark.parametrize("kernel", ["cubic", "lanczos3"])
@pytest.mark.parametrize("out_hw", [(10, 13), (60, 80), (45, 26), (17, 120), (91, 7)])
def test_resize_torch_float64_is_bit_identical_to_imresize_whatever_the_banding(kernel, out_hw, monkeypatch):
    from pipeline.inference import resize

    img = random_image((30, 40, 3), np.float64, seed=3)
    expected = imresize(img, output_size=out_hw, kernel=kernel)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    for elements in (None, 300, 1):  # one band; a few rows a band; a row a band
        if elements:
            monkeypatch.setattr(resize, "_BAND_ELEMENTS", elements)
        got = resize_torch(x, out_hw, kernel=kernel)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected)


def test_resize_torch_calls_check_before_every_band_and_stops_when_it_raises(monkeypatch):
    from pipeline.inference import resize

    monkeypatch.setattr(resize, "_BAND_ELEMENTS", 3 * 80)  # one output row a band
    calls = []
    resize_torch(torch.rand(1, 3, 30, 40), (60, 80), check=lambda: calls.append(1))
    assert len(calls) == 60

    def stop():
        calls.append(1)
        if len(calls) > 63:
            raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        resize_torch(torch.rand(1, 3, 30, 40), (60, 80), check=stop)
    assert len(calls) == 64


def test_resize_plan_reads_only_the_input_rows_under_a_band():
    from pipeline.inference.resize import ResizePlan

    plan = ResizePlan((1000, 10), (2000, 10))
    lo, hi = plan.input_rows(1000, 1010)  # output rows 1000..1009 sit at input 499.75..504.25
    assert (lo, hi) == (498, 507)
