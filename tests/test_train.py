"""Training: each loss term is wired and weighted as configured, the loop
learns, checkpoints resume exactly, exported weights load as a model, and the
same loop runs on 2 Ray Train workers and resumes there.

Everything is tiny (a few-thousand-parameter EDSR, 64 px synthetic images,
a handful of steps). No VGG weights exist offline: the perceptual-loss tests
use a small randomly initialised VGG-style network in torchvision's layout
(`features.N` convs, a max-pool where the index skips one), saved to a temp
file and passed as `loss.vgg_weights` exactly as real VGG19 weights would be.
"""

from __future__ import annotations

import argparse
import importlib.util
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from torch import nn

from pipeline.models import load_model, read_state_dict
from pipeline.models.edsr.arch import EDSR
from pipeline.train import add_train_arguments, config_from_args, run_train
from pipeline.train.config import Config, LossConfig, load_config
from pipeline.train.export import export_weights
from pipeline.train.losses import MissingWeightsError, SRLoss
from pipeline.train.models import build_model
from pipeline.train.trainer import Trainer, lr_factor

TINY = {"num_feat": 8, "num_block": 1}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four 64x64 RGB PNGs with smooth structure plus texture."""
    root = tmp_path_factory.mktemp("hr")
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    for i in range(4):
        rng = np.random.default_rng(i)
        r = np.sin(xx * (3 + i) * np.pi) * 0.4 + 0.5
        g = np.cos(yy * (2 + i) * np.pi + xx) * 0.4 + 0.5
        b = (xx + yy) / 2 * 0.8 + 0.1
        pixels = np.stack([r, g, b], -1) + rng.normal(0, 0.03, (64, 64, 3))
        Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)).save(root / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A tiny random VGG-style feature stack in torchvision's key layout:
    conv1_1 (0), conv1_2 (2), pool1 (4), conv2_1 (5), conv2_2 (7)."""
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    path = tmp_path_factory.mktemp("vgg") / "tiny_vgg.safetensors"
    safetensors.torch.save_file({f"features.{k}": v for k, v in features.state_dict().items()}, str(path))
    return str(path)


def tiny_config(images, out, **train) -> Config:
    cfg = Config()
    cfg.data.hr = str(images)
    cfg.data.val_images = ["img3.png"]
    cfg.data.lr_patch = 8
    cfg.data.batch_size = 4
    cfg.model.arch, cfg.model.scale, cfg.model.options = "edsr", 2, dict(TINY)
    cfg.optim.lr = 1e-3
    cfg.train.out = str(out)
    cfg.train.steps = 4
    cfg.train.val_every = cfg.train.ckpt_every = 2
    cfg.train.log_every = 1
    cfg.train.threads = 1
    cfg.train.progress = False
    for key, value in train.items():
        cfg.override(key.replace("__", "."), value)
    return cfg


def full_loss_config(vgg_file, **lambdas) -> LossConfig:
    cfg = LossConfig(lambda_pix=1.0, lambda_perc=1.0, vgg_weights=vgg_file, perc_layers={"conv2_2": 1.0},
                     lambda_adv=1.0, disc_feat=8, lambda_tv=1.0)
    for key, value in lambdas.items():
        setattr(cfg, key, value)
    return cfg


def _batch(seed=0):
    """(LR, HR) for a x2 generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 32, 32, generator=g)


def _sr_hr(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)


# --- losses -------------------------------------------------------------------------

@pytest.mark.parametrize("gan_type", ["relativistic", "vanilla"])
def test_each_lambda_scales_only_its_own_term(vgg_file, gan_type):
    sr, hr = _sr_hr()
    torch.manual_seed(1)
    base = SRLoss(full_loss_config(vgg_file, gan_type=gan_type))
    _, terms = base(sr, hr)
    assert set(terms) == {"pix", "perc", "adv", "tv"}
    for name, field in [("pix", "lambda_pix"), ("perc", "lambda_perc"), ("adv", "lambda_adv"), ("tv", "lambda_tv")]:
        torch.manual_seed(1)  # same discriminator initialisation
        doubled = SRLoss(full_loss_config(vgg_file, gan_type=gan_type, **{field: 2.0}))
        total, new = doubled(sr, hr)
        assert new[name].item() == pytest.approx(2 * terms[name].item(), rel=1e-5)
        for other in set(terms) - {name}:
            assert new[other].item() == pytest.approx(terms[other].item(), rel=1e-5)
        assert total.item() == pytest.approx(sum(v.item() for v in new.values()), rel=1e-6)


def test_zero_lambda_disables_the_term_and_builds_no_network():
    loss = SRLoss(LossConfig(lambda_pix=1.0, lambda_perc=0.0, lambda_adv=0.0, lambda_tv=0.0, vgg_weights=""))
    assert loss.perceptual is None and loss.discriminator is None
    _, terms = loss(*_sr_hr())
    assert set(terms) == {"pix"}
    sr, hr = _sr_hr()
    assert SRLoss(LossConfig(pixel="l2"))(sr, hr)[1]["pix"].item() == pytest.approx(((sr - hr) ** 2).mean().item())


@pytest.mark.parametrize("term", ["pix", "perc", "adv", "tv"])
def test_gradients_reach_the_generator_from_each_term(vgg_file, term):
    lambdas = {f"lambda_{t}": (1.0 if t == term else 0.0) for t in ("pix", "perc", "adv", "tv")}
    loss = SRLoss(full_loss_config(vgg_file, **lambdas))
    torch.manual_seed(0)
    net = EDSR(scale=2, **TINY)
    lr, hr = _batch()
    total, terms = loss(net(lr), hr)
    assert set(terms) == {term}
    total.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    assert net.conv_first.weight.grad.abs().sum() > 0  # all the way to the first layer
    if term == "adv":  # the generator step leaves the discriminator untouched
        assert all(p.grad is None for p in loss.discriminator.parameters())


def test_discriminator_step_trains_the_discriminator(vgg_file):
    loss = SRLoss(full_loss_config(vgg_file, lambda_perc=0.0, discriminator="vgg"))
    sr, hr = _sr_hr()
    d = loss.discriminator_loss(sr.requires_grad_(), hr)
    d.backward()
    assert sr.grad is None  # the SR batch is detached for the discriminator
    assert all(p.grad is not None for p in loss.discriminator.parameters())


def test_missing_vgg_weights_is_a_clear_error(tmp_path, images, capsys):
    with pytest.raises(MissingWeightsError, match="loss.vgg_weights"):
        SRLoss(LossConfig(lambda_perc=0.1, vgg_weights=""))
    with pytest.raises(MissingWeightsError, match="loss.vgg_weights.*nowhere.pth"):
        SRLoss(LossConfig(lambda_perc=0.1, vgg_weights=str(tmp_path / "nowhere.pth")))
    # through the command line: exit status 2 and the setting named
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--hr", str(images), "--out", str(tmp_path / "run"), "--no-ray", "--set", "loss.lambda_perc=0.1"])
    assert run_train(args) == 2
    assert "loss.vgg_weights" in capsys.readouterr().err


# --- config -------------------------------------------------------------------------

def test_config_from_toml_with_cli_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\narch = "edsr"\nscale = 2\noptions = { num_feat = 8 }\n'
                    '[loss]\nlambda_tv = 0.5\n[optim]\nbetas = [0.9, 0.999]\n')
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--config", str(path), "--scale", "4", "--set", "loss.lambda_perc=0.25", "--set", "loss.pixel=l2",
         "--workers", "2"])
    cfg = config_from_args(args)
    assert (cfg.model.scale, cfg.model.options, cfg.loss.lambda_tv) == (4, {"num_feat": 8}, 0.5)
    assert (cfg.loss.lambda_perc, cfg.loss.pixel, cfg.optim.betas, cfg.train.workers) == (0.25, "l2", (0.9, 0.999), 2)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("model:\n  scale: 3\nloss:\n  perc_layers: {relu2_2: 0.5}\n")
    if importlib.util.find_spec("yaml"):  # YAML only where PyYAML is installed
        cfg = load_config(str(yaml_path), ["train.steps=7"])
        assert (cfg.model.scale, cfg.loss.perc_layers, cfg.train.steps) == (3, {"relu2_2": 0.5}, 7)
    with pytest.raises(ValueError, match="loss.lamda_tv"):
        load_config(None, ["loss.lamda_tv=1"])
    with pytest.raises(ValueError, match="unknown config section"):
        Config.from_dict({"los": {}})


def test_learning_rate_schedules():
    cfg = Config().optim
    cfg.lr, cfg.min_lr, cfg.warmup_steps = 1.0, 0.0, 10
    assert lr_factor(cfg, 0, 110) == pytest.approx(0.1)
    assert lr_factor(cfg, 10, 110) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 110) == pytest.approx(0.5)
    assert lr_factor(cfg, 110, 110) == pytest.approx(0.0)
    cfg.scheduler, cfg.warmup_steps, cfg.milestones, cfg.gamma = "multistep", 0, [5, 8], 0.5
    assert [lr_factor(cfg, s, 10) for s in (4, 5, 8)] == [1.0, 0.5, 0.25]


# --- the loop -----------------------------------------------------------------------

def test_a_few_steps_reduce_the_l1_loss_on_a_fixed_batch(images, tmp_path):
    cfg = tiny_config(images, tmp_path, optim__scheduler="constant", optim__ema_decay=0.0)
    trainer = Trainer(cfg)
    fixed = trainer.sampler.batch(0, 0, 4)
    trainer.sampler.batch = lambda step, start, stop: fixed
    losses = [trainer.train_step()["pix"] for _ in range(40)]
    assert losses[-1] < 0.6 * losses[0]


def test_checkpoint_and_resume_continue_with_identical_weights(images, tmp_path):
    straight = Trainer(tiny_config(images, tmp_path / "a"))
    straight.run()

    interrupted = Trainer(tiny_config(images, tmp_path / "b"))
    interrupted.train_step(), interrupted.train_step()
    interrupted.save_checkpoint()  # then the process "dies"
    del interrupted
    resumed = Trainer(tiny_config(images, tmp_path / "b"))
    assert resumed.step == 2
    resumed.run()
    assert resumed.step == 4
    for name, value in straight.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name]), name
    for name, value in straight.ema.items():
        assert torch.equal(value, resumed.ema[name]), name
    assert straight.opt.state_dict()["state"][0]["step"] == resumed.opt.state_dict()["state"][0]["step"]
    # keep_checkpoints=2: steps 2 and 4
    assert [p.rsplit("/", 1)[-1] for p in resumed.checkpoints()] == ["step-00000002.pt", "step-00000004.pt"]
    # a checkpoint is also a model file: load_model takes its EMA weights
    from_checkpoint = load_model(resumed.checkpoints()[-1])
    for name, value in resumed.ema.items():
        assert torch.equal(value, from_checkpoint.module.state_dict()[name]), name
    # a finished run started again does nothing more
    again = Trainer(tiny_config(images, tmp_path / "b"))
    assert again.step == 4 and again.run()["step"] == 4


def test_gan_and_perceptual_training_checkpoint_and_resume(images, vgg_file, tmp_path):
    extra = dict(loss__lambda_perc=0.1, loss__vgg_weights=vgg_file, loss__perc_layers={"conv2_2": 1.0},
                 loss__lambda_adv=0.01, loss__disc_feat=4, loss__lambda_tv=0.01)
    trainer = Trainer(tiny_config(images, tmp_path, train__steps=2, **extra))
    summary = trainer.run()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_pix", "loss_perc", "loss_adv", "loss_tv", "loss_d", "lr", "images_per_s", "val_psnr_y"} <= set(record)
    resumed = Trainer(tiny_config(images, tmp_path, train__steps=3, **extra))
    assert resumed.step == 2
    for name, value in trainer.loss.discriminator.state_dict().items():
        assert torch.equal(value, resumed.loss.discriminator.state_dict()[name])
    assert resumed.run()["step"] == 3 and summary["step"] == 2


def test_exported_safetensors_loads_with_load_model_and_runs(images, tmp_path):
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--hr", str(images), "--arch", "edsr", "--scale", "2", "--out", str(tmp_path / "run"), "--steps", "3",
         "--no-ray", "--export", str(tmp_path / "final.safetensors"),
         "--set", "model.options={num_feat=8, num_block=1}", "--set", "data.lr_patch=8",
         "--set", "data.batch_size=2", "--set", "train.progress=false"])
    assert run_train(args) == 0
    for path in (tmp_path / "run" / "model.safetensors", tmp_path / "final.safetensors"):
        model = load_model(str(path))
        assert (model.arch, model.scale, model.params, model.config["num_feat"]) == ("EDSR", 2, model.params, 8)
        out = model.module(torch.rand(1, 3, 10, 12))
        assert out.shape == (1, 3, 20, 24) and torch.isfinite(out).all()
    sidecar = json.loads((tmp_path / "final.json").read_text())
    assert sidecar["step"] == 3 and sidecar["arch"] == "EDSR"
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss_total" in r] == [3]  # log_every=50: the last step only

    # shipping copy in fp16: half the bytes, loads as fp32, same output within fp16 rounding
    record = export_weights(str(tmp_path / "final.safetensors"), str(tmp_path / "ship.safetensors"),
                            dtype=torch.float16, extra={"note": "test"})
    assert record["dtype"] == "float16" and record["step"] == 3 and record["note"] == "test"
    full, half = load_model(str(tmp_path / "final.safetensors")), load_model(str(tmp_path / "ship.safetensors"))
    assert half.config == full.config and next(half.module.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 10, 12)
    assert torch.allclose(half.module(x), full.module(x), atol=2e-3)
    assert (tmp_path / "ship.safetensors").stat().st_size < 0.6 * (tmp_path / "final.safetensors").stat().st_size


@pytest.mark.parametrize("arch, options, init, name", [
    ("span", "{num_feat=8, num_block=1}", "", "SPAN"),
    ("span", "{num_feat=8, num_block=1, gain=0}", "nearest", "SPAN"),
    ("compact", "{num_feat=8, num_conv=1}", "", "Compact"),
])
def test_efficient_architectures_train_and_export_weights_load_model_recognises(images, tmp_path, arch, options,
                                                                                 init, name):
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--hr", str(images), "--arch", arch, "--scale", "2", "--out", str(tmp_path / "run"), "--steps", "3",
         "--no-ray", "--set", f"model.options={options}", "--set", f"model.init={json.dumps(init)}",
         "--set", "data.lr_patch=8",
         "--set", "data.batch_size=2", "--set", "train.progress=false"])
    assert run_train(args) == 0
    model = load_model(str(tmp_path / "run" / "model.safetensors"))
    assert (model.arch, model.scale, model.config["num_feat"]) == (name, 2, 8)
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        out = model.module(x)
        # the file's eval_conv is the fold of the weights it was trained as: the same network in training form
        net, _, _ = build_model(arch, 2, model.config | {"scale": 2})
        net.load_state_dict(read_state_dict(str(tmp_path / "run" / "model.safetensors"))[0])
        torch.testing.assert_close(net.train()(x), out, rtol=1e-5, atol=1e-5)
    assert out.shape == (1, 3, 20, 24) and torch.isfinite(out).all()


def test_a_benchmark_image_in_the_training_folder_stops_the_run_naming_it(images, tmp_path):
    """Set5 copied into the training folder under another name, as a modcropped copy, is still found."""
    bench = tmp_path / "set5"
    bench.mkdir()
    first = sorted(images.glob("*.png"))[0]
    Image.fromarray(np.asarray(Image.open(first))[:60, :60]).save(bench / "baby.png")
    args = add_train_arguments(argparse.ArgumentParser()).parse_args(
        ["--hr", str(images), "--arch", "espcn", "--scale", "2", "--out", str(tmp_path / "run"), "--steps", "1",
         "--no-ray", "--set", "data.lr_patch=8", "--set", "data.batch_size=2", "--set", "train.progress=false",
         "--set", f"data.benchmark_hr=[{json.dumps(str(bench))}]"])
    with pytest.raises(ValueError, match=rf"1 training/validation image\(s\) are benchmark images.*{first.name} = .*baby\.png"):
        Trainer(config_from_args(args))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_deploy_export_keeps_spans_folded_convs_only_and_the_same_output(tmp_path):
    from pipeline.models.span import SPAN

    torch.manual_seed(0)
    net = SPAN(scale=2, num_feat=8, num_block=2, gain=2)
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    src = tmp_path / "run.safetensors"
    safetensors.torch.save_file(net.state_dict(), src)
    export_weights(str(src), str(tmp_path / "ship.safetensors"), deploy=True)
    shipped, full = load_model(str(tmp_path / "ship.safetensors")), load_model(str(src))
    assert shipped.config == {**full.config, "gain": 0}
    keys = read_state_dict(str(tmp_path / "ship.safetensors"))[0]
    assert not [k for k in keys if ".sk." in k or ".conv." in k]
    assert (tmp_path / "ship.safetensors").stat().st_size < 0.3 * src.stat().st_size
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(shipped.module(x), full.module(x), rtol=1e-5, atol=1e-5)


def test_validation_names_find_a_lossless_reencoding_and_webp_files_are_training_images(images, tmp_path):
    from pipeline.train.data import split_sources

    folder = tmp_path / "webp"
    folder.mkdir()
    for path in sorted(images.glob("*.png")):
        Image.open(path).save(folder / f"{path.stem}.webp", lossless=True)
    names = sorted(p.stem for p in folder.glob("*.webp"))
    cfg = Config().data
    cfg.hr, cfg.val_images = str(folder), [f"{names[0]}.png"]
    train, val = split_sources(cfg)
    assert [s.key for s in val] == [f"{names[0]}.webp"]
    assert sorted(s.key for s in train) == [f"{n}.webp" for n in names[1:]]
    cfg.val_images = ["absent.png"]
    with pytest.raises(FileNotFoundError, match="absent.png"):
        split_sources(cfg)


# --- Ray Train ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_train_two_workers_runs_and_resumes(images, tmp_path, local_ray):
    from pipeline.train.distributed import train_ray

    out = tmp_path / "ray"
    summary = train_ray(tiny_config(images, out, train__workers=2, train__steps=2), workers=2)
    assert summary["step"] == 2
    assert local_ray.is_initialized()  # the caller's Ray is left running
    summary = train_ray(tiny_config(images, out, train__workers=2), workers=2)
    assert summary["step"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss_total" in r] == [1, 2, 3, 4]  # resumed at 2, not restarted
    assert {r["workers"] for r in records if "loss_total" in r} == {2}
    model = load_model(str(out / "model.safetensors"))
    assert model.scale == 2 and torch.isfinite(model.module(torch.rand(1, 3, 8, 8))).all()
