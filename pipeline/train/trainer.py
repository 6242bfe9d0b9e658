"""The training loop, the same in one process and in every Ray Train worker.

Why it is built this way:
- the learning rate is a pure function of the step and every batch is a pure
  function of (seed, step, sample index), so a run resumed from a checkpoint
  continues exactly as if it had never stopped;
- the EMA of the weights is what gets validated and exported: for SR it is
  worth ~0.05-0.1 dB over the raw weights for free;
- checkpoints (model, EMA, optimizers, step, RNG) go to any fsspec URL, the
  newest one is picked up automatically on start, and the exported file is a
  plain safetensors written by `pipeline.models.save_model`, so
  `load_model` recognises the architecture from the weights.
"""

from __future__ import annotations

import copy
import io
import json
import math
import random
import sys
import time
from contextlib import nullcontext

import fsspec
import numpy as np
import torch
from torch import nn

from pipeline import metrics, store
from pipeline.inference.engine import pick_device  # noqa: F401  (also used by train.distributed)
from pipeline.models import LoadedModel, save_model

from .config import Config
from .data import PatchSampler, benchmark_leaks, load_pairs, split_sources, to_tensor
from .losses import SRLoss
from .models import build_model, init_from


def lr_factor(cfg, step: int, steps: int) -> float:
    """Multiplier of the base learning rate at `step` (warmup, then the schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.scheduler == "constant":
        return 1.0
    if cfg.scheduler == "multistep":
        return cfg.gamma ** sum(step >= m for m in cfg.milestones)
    if cfg.scheduler == "cosine":
        t = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        floor = cfg.min_lr / cfg.lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"optim.scheduler must be cosine, multistep or constant, not {cfg.scheduler!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)




def run_summary(cfg: Config) -> dict:
    """What a finished run left in train.out: step of the newest checkpoint,
    the last metrics record and the last validation PSNR."""
    fs, root = store.open_location(cfg.train.out, cfg.data.storage_options)
    found = sorted(fs.glob(f"{root}/checkpoints/step-*.pt"))
    step = int(found[-1].rsplit("-", 1)[-1].split(".")[0]) if found else 0
    records = []
    if fs.exists(f"{root}/metrics.jsonl"):
        records = [json.loads(line) for line in fs.cat_file(f"{root}/metrics.jsonl").decode().splitlines() if line]
    val = [r["val_psnr_y"] for r in records if r.get("val_psnr_y") is not None]
    return {"step": step, "val_psnr_y": val[-1] if val else None, "out": cfg.train.out,
            "weights": fs.unstrip_protocol(f"{root}/model.safetensors"), "last": records[-1] if records else None}


class Trainer:
    """One worker's share of a run. `rank`/`world_size` come from Ray Train
    (torch.distributed already initialised) or are 0/1 for a single process;
    `report(metrics)` is called on every rank at each log step."""

    def __init__(self, cfg: Config, *, rank: int = 0, world_size: int = 1, device: str | None = None,
                 report=None, log=None):
        if not cfg.train.out:
            raise ValueError("train.out (--out) is required: where checkpoints, metrics and weights go")
        if not cfg.data.hr:
            raise ValueError("data.hr (--hr) is required: the folder of training HR images")
        if cfg.data.batch_size % world_size:
            raise ValueError(f"data.batch_size {cfg.data.batch_size} is not divisible by {world_size} workers")
        self.cfg, self.rank, self.world_size, self.report = cfg, rank, world_size, report
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.is_main = rank == 0
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = pick_device(device or cfg.train.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest conv once
        seed_everything(cfg.train.seed)
        self.fs, self.root = store.open_location(cfg.train.out, cfg.data.storage_options)

        self.net, self.arch_name, self.model_config = build_model(cfg.model.arch, cfg.model.scale, cfg.model.options)
        if cfg.model.init and not self.checkpoints():
            if cfg.model.init != "nearest" or not hasattr(self.net, "start_as_nearest"):
                raise ValueError(f"model.init {cfg.model.init!r}: only \"nearest\", for arch span")
            self.net.start_as_nearest()
        if cfg.model.init_from and not self.checkpoints():  # a resumed run has its own weights
            copied, skipped = init_from(self.net, cfg.model.init_from, cfg.data.storage_options)
            if self.is_main:
                self.log(f"init_from {cfg.model.init_from}: {len(copied)} tensors copied, new: {skipped}")
        self.memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        self.net.to(self.device, memory_format=self.memory_format)
        self.params = sum(p.numel() for p in self.net.parameters())
        self.ema = ({k: v.detach().clone() for k, v in self.net.state_dict().items()}
                    if cfg.optim.ema_decay > 0 else None)
        self.loss = SRLoss(cfg.loss).to(self.device)
        o = cfg.optim
        self.opt = torch.optim.Adam(self.net.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        disc = self.loss.discriminator
        self.opt_d = torch.optim.Adam(disc.parameters(), lr=o.lr_d, betas=o.betas) if disc is not None else None

        self.model, self.disc_ddp = self.net, None
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            # No buffer broadcast: the generators' only buffers are constant means
            # (and gloo refuses to broadcast into channels_last (1, C, 1, 1) ones);
            # the discriminator's BatchNorm statistics are never used in eval mode.
            self.model = DDP(self.net, device_ids=ids, broadcast_buffers=False)
            if disc is not None:
                self.disc_ddp = DDP(disc, device_ids=ids, broadcast_buffers=False)
                self.loss.discriminator_ddp = self.disc_ddp

        train_sources, val_sources = split_sources(cfg.data)
        scale = cfg.model.scale
        train_pairs = load_pairs(train_sources, scale, cfg.data.storage_options, scale_augment=cfg.data.scale_augment)
        self.val = (load_pairs(val_sources, scale, cfg.data.storage_options, cfg.data.val_max_side)
                    if self.is_main else [])
        leaks = benchmark_leaks([p for p in train_pairs + self.val if "@" not in p.key], cfg.data.benchmark_hr,
                                cfg.data.storage_options)
        if leaks:
            raise ValueError(f"{len(leaks)} training/validation image(s) are benchmark images "
                             f"(data.benchmark_hr): {'; '.join(leaks[:3])}")
        self.sampler = PatchSampler(train_pairs, cfg.data, scale, cfg.train.seed)
        if self.is_main:
            self.log(f"{self.arch_name} x{scale}: {self.params} parameters; {len(train_sources)} training "
                     f"images, {len(val_sources)} validation images; {world_size} worker(s) on {self.device}")
            if self.sampler.skipped:
                self.log(f"{len(self.sampler.skipped)} training image(s) smaller than one LR crop "
                         f"({cfg.data.lr_patch} px) left out: {', '.join(self.sampler.skipped[:5])}")
        self.step, self.wall = 0, 0.0
        self.resume()

    # --- checkpoints -----------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if self.root else "/".join(parts)

    def checkpoints(self) -> list[str]:
        return sorted(self.fs.glob(self._path("checkpoints", "step-*.pt")))

    def state(self) -> dict:
        return {
            "step": self.step,
            "wall_time": self.wall,
            # BasicSR's key names, so `load_model` / `upscaler eval` read a checkpoint
            # directly and prefer the EMA weights.
            "params": self.net.state_dict(),
            "params_ema": self.ema,
            "scale": self.cfg.model.scale,
            "optimizer": self.opt.state_dict(),
            "discriminator": self.loss.discriminator.state_dict() if self.opt_d else None,
            "optimizer_d": self.opt_d.state_dict() if self.opt_d else None,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
            "train_config": json.dumps(self.cfg.to_dict()),
        }

    def save_checkpoint(self) -> str:
        path = self._path("checkpoints", f"step-{self.step:08d}.pt")
        if self.is_main:
            buffer = io.BytesIO()
            torch.save(self.state(), buffer)
            self.fs.makedirs(self._path("checkpoints"), exist_ok=True)
            store.write_atomic(self.fs, path, buffer.getvalue())
            for old in self.checkpoints()[: -self.cfg.train.keep_checkpoints]:
                self.fs.rm(old)
            self.export(self.fs.unstrip_protocol(self._path("model.safetensors")))
        self._barrier()
        return path

    def resume(self) -> None:
        found = self.checkpoints()
        if not found:
            return
        with self.fs.open(found[-1], "rb") as f:
            state = torch.load(io.BytesIO(f.read()), map_location=self.device, weights_only=True)
        self.net.load_state_dict(state["params"] if "params" in state else state["model"])
        ema = state.get("params_ema", state.get("ema"))
        if self.ema is not None and ema is not None:
            self.ema = {k: v.to(self.device) for k, v in ema.items()}
        self.opt.load_state_dict(state["optimizer"])
        if self.opt_d is not None and state.get("optimizer_d") is not None:
            self.loss.discriminator.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["optimizer_d"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        self.step, self.wall = int(state["step"]), float(state.get("wall_time", 0.0))
        if self.is_main:
            self.log(f"resumed from {found[-1]} at step {self.step}")

    # --- export and validation -------------------------------------------------------
    def eval_module(self) -> nn.Module:
        """A copy of the network holding the EMA weights (or the raw ones)."""
        module = copy.deepcopy(self.net)
        if self.ema is not None:
            module.load_state_dict(self.ema)
        return module.eval().requires_grad_(False)

    def export(self, path: str, summary: dict | None = None) -> None:
        module = self.eval_module().to("cpu", memory_format=torch.contiguous_format)
        loaded = LoadedModel(name="trained", arch=self.arch_name, module=module, scale=self.cfg.model.scale,
                             in_channels=3, out_channels=3, config=self.model_config)
        save_model(loaded, path, self.cfg.data.storage_options)
        sidecar = path.rsplit(".", 1)[0] + ".json"
        record = {"arch": self.arch_name, "scale": self.cfg.model.scale, "params": self.params, "step": self.step,
                  "wall_time_s": round(self.wall, 1), "config": self.cfg.to_dict(), **(summary or {})}
        with fsspec.open(sidecar, "w", **self.cfg.data.storage_options) as f:
            json.dump(record, f, indent=2, default=str)

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean PSNR-Y (shave = scale) of the EMA model on the held-out images."""
        if not self.val:
            return None
        module, scale, scores = self.eval_module(), self.cfg.model.scale, []
        for pair in self.val:
            lr = to_tensor(pair.lr[None]).to(self.device, memory_format=self.memory_format)
            sr = module(lr).clamp_(0, 1).mul_(255).round_().byte()[0].permute(1, 2, 0).cpu().numpy()
            scores.append(metrics.psnr(sr, pair.hr, y_channel=True, shave=scale))
        return float(np.mean(scores))

    # --- the loop --------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def _append_metrics(self, record: dict) -> None:
        path = self._path("metrics.jsonl")
        line = json.dumps(record) + "\n"
        if "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)):
            self.fs.makedirs(self.root, exist_ok=True)
            with open(path, "a") as f:
                f.write(line)
        else:  # object stores cannot append: rewrite (metrics files stay small)
            old = self.fs.cat_file(path).decode() if self.fs.exists(path) else ""
            self.fs.pipe_file(path, (old + line).encode())

    def _ema_update(self) -> None:
        decay = min(self.cfg.optim.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                if v.dtype.is_floating_point:
                    self.ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    self.ema[k].copy_(v)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        factor = lr_factor(cfg.optim, self.step, cfg.train.steps)
        for group in self.opt.param_groups:
            group["lr"] = cfg.optim.lr * factor
        if self.opt_d:
            for group in self.opt_d.param_groups:
                group["lr"] = cfg.optim.lr_d * factor
        per_rank = cfg.data.batch_size // self.world_size
        lr, hr = self.sampler.batch(self.step, self.rank * per_rank, (self.rank + 1) * per_rank)
        lr = lr.to(self.device, memory_format=self.memory_format, non_blocking=True)
        hr = hr.to(self.device, memory_format=self.memory_format, non_blocking=True)
        self.model.train()
        sr = self.model(lr)
        total, terms = self.loss(sr, hr)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.optim.grad_clip)
        self.opt.step()
        values = {k: float(v.detach()) for k, v in terms.items()}
        if self.opt_d is not None:  # alternate: one discriminator step per generator step
            d_loss = self.loss.discriminator_loss(sr, hr)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            values["d"] = float(d_loss.detach())
        if self.ema is not None:
            self._ema_update()
        self.step += 1
        values.update(total=float(total.detach()), lr=cfg.optim.lr * factor)
        return values

    def run(self) -> dict:
        cfg = self.cfg.train
        if self.is_main:
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(self._path("config.json"), "w") as f:
                json.dump(self.cfg.to_dict(), f, indent=2)
        bar = nullcontext()
        if self.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True,
                       mininterval=1 if sys.stderr.isatty() else 60, file=sys.stderr)
        val_psnr, last = None, None
        t_log, n_log = time.perf_counter(), 0
        with bar:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                values = self.train_step()
                self.wall += time.perf_counter() - t0
                n_log += 1
                if self.is_main and cfg.progress:
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['total']:.4f}", refresh=False)
                record = None
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - t_log
                    record = {"step": self.step, **{f"loss_{k}": v for k, v in values.items() if k not in ("lr",)},
                              "lr": values["lr"], "images_per_s": round(n_log * self.cfg.data.batch_size / elapsed, 2), "workers": self.world_size,
                              "wall_time_s": round(self.wall, 1)}
                    t_log, n_log = time.perf_counter(), 0
                if self.is_main and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    t_val = time.perf_counter()
                    val_psnr = self.validate()
                    record = {**(record or {"step": self.step}), "val_psnr_y": val_psnr}
                    self.wall += time.perf_counter() - t_val
                    t_log += time.perf_counter() - t_val
                if record is not None:
                    if self.is_main:
                        self._append_metrics(record)
                        if val_psnr is not None and "val_psnr_y" in record:
                            self.log(f"step {self.step}: val PSNR-Y {val_psnr:.3f} dB, loss {values['total']:.4f}")
                    if self.report is not None:
                        self.report({k: v for k, v in record.items() if v is not None})
                    last = record
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
        summary = {"step": self.step, "val_psnr_y": val_psnr, "params": self.params,
                   "out": cfg.out, "weights": self.fs.unstrip_protocol(self._path("model.safetensors")), "last": last}
        if self.is_main and cfg.export:
            self.export(cfg.export, {"val_psnr_y": val_psnr})
        return summary
