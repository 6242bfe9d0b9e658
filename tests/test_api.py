"""The Python API: the same work as the CLI, from code."""

import numpy as np

import pipeline


def test_upscale_image_keeps_dtype_and_channels():
    image = (np.arange(6 * 8, dtype=np.uint16).reshape(6, 8, 1) * 1000)
    out = pipeline.upscale_image(image, "bicubic", scale=2)
    assert out.shape == (12, 16, 1) and out.dtype == np.uint16 and out.max() > 255


def test_load_model_then_upscale_with_it():
    model = pipeline.load_model("lanczos", scale=3)
    assert model.arch == "lanczos" and model.scale == 3
    assert pipeline.upscale_image(np.zeros((4, 5, 3), np.uint8), model).shape == (12, 15, 3)


def test_plan_then_run_then_plan_again(tmp_path):
    from PIL import Image

    (tmp_path / "src").mkdir()
    for i in range(3):
        Image.new("RGB", (10, 8), (i * 50, 10, 10)).save(tmp_path / "src" / f"{i}.png")
    before = pipeline.plan(str(tmp_path / "src"), str(tmp_path / "dst"), model="bicubic", scale=2)
    assert (before["todo"], before["megapixels_out"]) == (3, 3 * 20 * 16 / 1e6)
    summary = pipeline.run(str(tmp_path / "src"), str(tmp_path / "dst"), model="bicubic", scale=2)
    assert (summary["ok"], summary["failed"]) == (3, 0)
    after = pipeline.plan(str(tmp_path / "src"), str(tmp_path / "dst"), model="bicubic", scale=2)
    assert (after["todo"], after["done"]) == (0, 3)


def test_upscale_image_leaves_the_callers_model_as_it_was():
    import torch

    model = pipeline.load_model("edsr-x2")
    before = {k: (v.dtype, v.device) for k, v in model.module.state_dict().items()}
    out = pipeline.upscale_image(np.zeros((12, 10, 3), np.uint8), model, precision="bf16", device="cpu")
    assert out.shape == (24, 20, 3)
    assert {k: (v.dtype, v.device) for k, v in model.module.state_dict().items()} == before
    assert next(model.module.parameters()).dtype == torch.float32
