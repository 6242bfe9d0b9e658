"""Engine tuning: tiles and batch sizes from measured speed (`upscaler calibrate`), and
`--compile` (torch.compile)."""

import json

import numpy as np
import pytest

from pipeline.cli import EXIT_OK, main
from pipeline.inference import calibration
from pipeline.inference.engine import Upscaler
from pipeline.models import load_model
from pipeline.spec import RunSpec
from tests.test_engine import photo, tiny_edsr


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSCALER_CACHE", str(tmp_path / "cache"))


def _model_id(model):
    return calibration.model_id(model)


def test_measure_tiles_times_every_candidate_the_memory_allows_and_names_the_fastest():
    upscaler = Upscaler(tiny_edsr(2), device="cpu", precision="fp32", memory_budget_bytes=200 * 200 * 4 * 3 * 8 * 4)
    assert upscaler.memory_tile() < 256
    result = calibration.measure_tiles(upscaler, seconds=0.5)
    tiles = {int(t): rate for t, rate in result["tiles"].items()}
    assert set(tiles) == {t for t in calibration.CANDIDATE_TILES if upscaler.min_tile <= t <= upscaler.memory_tile()}
    assert all(rate > 0 for rate in tiles.values())
    assert result["best_tile"] == max(tiles, key=tiles.get)
    assert result["batches"] == {} and result["best_batch"] is None  # batch sizes are measured on CUDA only


def test_an_automatic_tile_uses_the_calibrated_one_but_never_more_than_memory_allows():
    model = tiny_edsr(2)
    untuned = Upscaler(model, device="cpu", precision="fp32")
    entry = {"model_id": _model_id(model), "device": "cpu", "precision": "fp32", "best_tile": 96, "best_batch": None}
    calibration.store(entry)
    tuned = Upscaler(model, device="cpu", precision="fp32")
    assert untuned.auto_tile() > 96 and tuned.auto_tile() == 96
    assert tuned.tiling_for(200, 200) == (96, tuned.overlap)
    assert tuned.info["tile"] == "auto" and tuned.info["calibrated_tile"] == 96
    assert Upscaler(model, device="cpu", precision="fp32", tile=64).tiling_for(200, 200) == (64, tuned.overlap)
    calibration.store({**entry, "best_tile": 4096})
    assert Upscaler(model, device="cpu", precision="fp32").auto_tile() == untuned.memory_tile()
    # measured at another precision: not used
    calibration.store({**entry, "precision": "bf16"})
    assert Upscaler(model, device="cpu", precision="fp32").auto_tile() == untuned.auto_tile()


def test_a_damaged_calibration_cache_is_ignored(tmp_path):
    calibration.cache_path().parent.mkdir(parents=True)
    calibration.cache_path().write_text("{not json")
    model = tiny_edsr(2)
    assert Upscaler(model, device="cpu").tuned_tile is None
    calibration.cache_path().write_text(json.dumps({f"{_model_id(model)}|cpu": {"best_tile": "big"}}))
    assert Upscaler(model, device="cpu").tuned_tile is None


def test_calibrate_stores_the_fastest_tile_and_a_run_then_tiles_with_it(tmp_path, capsys):
    weights = tmp_path / "edsr.safetensors"
    from tests.conftest import save_edsr

    save_edsr(weights)
    assert main(["calibrate", "--model", str(weights), "--seconds", "1", "--precision", "fp32", "--json"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result["best_tile"] == int(max(result["tiles"], key=result["tiles"].get))
    assert result["mpx_per_second"] > 0 and result["precision"] == "fp32"
    upscaler = Upscaler(load_model(str(weights)), device="cpu", precision="fp32")
    assert upscaler.auto_tile() == min(result["best_tile"], upscaler.memory_tile())


def test_compile_gives_the_eager_output_to_float_rounding():
    torch = pytest.importorskip("torch")
    model = tiny_edsr(2)
    image = photo(40, 48)
    eager = Upscaler(model, device="cpu", precision="fp32", tile=0)
    compiled = Upscaler(model, device="cpu", precision="fp32", tile=0, compile=True)
    assert compiled.info["compile"] is True and "compile" not in eager.info
    a, b = eager.upscale([image])[0], compiled.upscale([image])[0]
    assert a.shape == b.shape == (80, 96, 3) and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert isinstance(compiled._compiled, torch.nn.Module) and compiled._compiled is not compiled.module


def test_compile_is_in_the_resume_key_only_when_set():
    model = tiny_edsr(2)
    engine = Upscaler(model, device="cpu").info
    plain = RunSpec(src="a", dst="b", model="x")
    assert "compile" not in plain.resolved(model, engine)
    compiled = RunSpec(src="a", dst="b", model="x", compile=True)
    assert compiled.resolved(model, engine)["compile"] is True
    assert plain.config_key(model, engine) != compiled.config_key(model, engine)


def test_a_calibration_holds_for_other_weights_of_the_same_network_not_for_another_network():
    import dataclasses

    import torch

    model = tiny_edsr(2)
    retrained = dataclasses.replace(model, module=torch.nn.Sequential(*model.module.children()), sha256="other")
    assert calibration.model_id(retrained) == calibration.model_id(model)
    assert calibration.model_id(tiny_edsr(4)) != calibration.model_id(model)  # other scale: other parameter count
    calibration.store({"model_id": calibration.model_id(model), "device": "cpu", "precision": "fp32",
                       "best_tile": 64, "best_batch": None})
    assert Upscaler(retrained, device="cpu", precision="fp32").auto_tile() == 64
    assert Upscaler(tiny_edsr(4), device="cpu", precision="fp32").tuned_tile is None
