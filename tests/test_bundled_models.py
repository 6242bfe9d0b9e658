"""The bundled models (issue 4): within their size caps, the defaults of
`upscaler run` for their scales, and above their quality targets on Set5/Set14
by the paper protocol (these need ../shared and skip without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ops.evaluate import evaluate
from pipeline.models import NAMED_MODELS, WEIGHTS_DIR, default_model, load_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data {DATA} not present (../shared)")
BUNDLED = [name for name, m in NAMED_MODELS.items() if m.weights]


def test_there_is_a_bundled_x2_and_x4_model_within_the_size_caps():
    assert {NAMED_MODELS[n].scale for n in BUNDLED} >= {2, 4}
    assert sum((WEIGHTS_DIR / NAMED_MODELS[n].weights).stat().st_size for n in BUNDLED) <= 5_000_000
    for name in BUNDLED:
        model = load_model(name)
        assert model.params == NAMED_MODELS[name].params <= 1_500_000


@pytest.mark.parametrize(("scale", "expected"), [(None, "edsr-x4"), (4, "edsr-x4"), (3, "edsr-x4"), (8, "edsr-x4"),
                                                 (2, "edsr-x2"), (1.5, "edsr-x2"), (1, "bicubic"), (0.5, "bicubic")])
def test_the_default_model_is_the_smallest_bundled_scale_that_reaches_the_target(scale, expected):
    assert default_model(scale) == expected


@needs_shared
@pytest.mark.shared
@pytest.mark.parametrize(("name", "dataset", "target"), [("edsr-x4", "set5", 31.0), ("edsr-x4", "set14", 27.8),
                                                         ("edsr-x2", "set5", 36.5)])
def test_bundled_model_meets_its_psnr_target(name, dataset, target):
    scale = NAMED_MODELS[name].scale
    result = evaluate(str(DATA / dataset / "HR"), scale, name, lr=str(DATA / dataset / "LR_bicubic" / f"X{scale}"))
    bicubic = evaluate(str(DATA / dataset / "HR"), scale, "bicubic",
                       lr=str(DATA / dataset / "LR_bicubic" / f"X{scale}"))
    assert result["mean"]["psnr"] >= target
    assert result["mean"]["psnr"] - bicubic["mean"]["psnr"] >= 1.8  # "by a wide margin"


@needs_shared
@pytest.mark.shared
@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("dataset", ["set5", "set14"])
def test_bf16_keeps_the_bundled_models_psnr_within_002_db_of_fp32(name, dataset):
    """bf16 is `--precision auto` on CPUs with native bf16 (and on CUDA): it must cost no quality."""
    scale = NAMED_MODELS[name].scale
    lr = str(DATA / dataset / "LR_bicubic" / f"X{scale}")
    fp32, bf16 = (evaluate(str(DATA / dataset / "HR"), scale, name, lr=lr, precision=p, device="cpu")
                  for p in ("fp32", "bf16"))
    assert abs(bf16["mean"]["psnr"] - fp32["mean"]["psnr"]) <= 0.02
    assert abs(bf16["mean"]["ssim"] - fp32["mean"]["ssim"]) <= 0.0005


def test_auto_precision_on_this_cpu_is_bf16_exactly_where_the_cpu_has_it_natively():
    import torch

    from pipeline.inference.engine import Upscaler, cpu_has_native_bf16

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert cpu_has_native_bf16() is native
    assert Upscaler(load_model("edsr-x2"), device="cpu").info["precision"] == ("bf16" if native else "fp32")
    assert Upscaler(load_model("bicubic"), device="cpu").info["precision"] == "fp32"  # no model to run
