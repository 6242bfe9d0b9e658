"""Running the training loop: in this process (debugging, one machine) or on
N Ray Train workers (`TorchTrainer`, DDP: gloo on CPU, NCCL on GPU).

Why our own checkpoints instead of Ray's: the loop writes and resumes them
itself (any fsspec URL), so the single-process and distributed paths share
one format and a run can move between them.
"""

from __future__ import annotations

import os
import tempfile

from .config import Config
from .trainer import Trainer, pick_device, run_summary


def train_single(cfg: Config) -> dict:
    return Trainer(cfg).run()


def train_loop_per_worker(loop_config: dict) -> None:
    """What each Ray Train worker runs: the same Trainer, on its rank."""
    import ray.train

    cfg = Config.from_dict(loop_config["config"])
    context = ray.train.get_context()
    device = "cpu"
    if pick_device(cfg.train.device).type == "cuda":
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    trainer = Trainer(cfg, rank=context.get_world_rank(), world_size=context.get_world_size(),
                      device=device, report=lambda metrics: ray.train.report(metrics))
    trainer.run()


def train_ray(cfg: Config, *, workers: int, ray_address: str | None = None) -> dict:
    """Run on `workers` Ray Train workers. Connects to RAY_ADDRESS / a running
    cluster when there is one (`ray job submit`), else starts a local Ray
    sized to this machine; a Ray started here is shut down at the end."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.job.ray import init_ray

    started = not ray.is_initialized()
    init_ray(ray_address, num_cpus=max(1, int(round(workers * cfg.train.cpus_per_worker))))
    try:
        use_gpu = pick_device(cfg.train.device).type == "cuda"
        resources = {"GPU": 1} if use_gpu else {}
        resources["CPU"] = cfg.train.cpus_per_worker
        if not cfg.train.threads:
            cfg.train.threads = max(1, int(cfg.train.cpus_per_worker))
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": cfg.to_dict()},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name="upscaler-train",
                                 storage_path=os.path.join(tempfile.gettempdir(), "upscaler-ray-train")),
        )
        result = trainer.fit()
        if result.error:
            raise result.error
        return run_summary(cfg)
    finally:
        if started:
            ray.shutdown()
