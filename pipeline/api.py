"""The Python API (re-exported by `pipeline`; imports are lazy, so `import pipeline` stays cheap):

    pipeline.load_model("bicubic" | path | URL)        -> LoadedModel
    pipeline.upscale_image(array, model=..., scale=...) -> array (same dtype and channels)
    pipeline.plan(src, dst, **options)                  -> dict (what a run would do and cost)
    pipeline.run(src, dst, executor="local", **options) -> dict (the run's summary)
"""

from __future__ import annotations

__all__ = ["load_model", "upscale_image", "plan", "run"]


def load_model(spec: str, *, scale: int | None = None, storage_options: dict | None = None):
    """A named model, a local path or an fsspec URL (.safetensors, .pth, .pt)."""
    from pipeline.models import load_model as _load

    return _load(spec, scale=scale, storage_options=storage_options)


def upscale_image(image, model=None, *, scale: float | None = None, tile: int | None = None,
                  overlap: int | None = None, precision: str = "auto", device: str = "auto"):
    """Upscale one H x W (x C) numpy array; `model` is a LoadedModel or a spec for load_model."""
    from pipeline.inference.engine import Upscaler
    from pipeline.models import default_model

    if model is None or isinstance(model, str):
        model = load_model(model or default_model(scale), scale=max(1, round(scale)) if scale else None)
    upscaler = Upscaler(model, device=device, precision=precision, tile=tile, overlap=overlap)
    return upscaler.upscale([image], scale)[0]


def _spec(src: str, dst: str, options: dict):
    from pipeline.spec import RunSpec

    return RunSpec(src=src, dst=dst, **options)


def plan(src: str, dst: str, *, gpu_hour_price: float | None = None, include_quarantined: bool = False,
         **options) -> dict:
    """What `run` would do: counts, megapixels, device-seconds and cost. Runs nothing.
    `options` are RunSpec fields (model, scale, tile, format, storage_options, ...)."""
    from pipeline.ops.plan import estimate

    spec = _spec(src, dst, {**options, "include_quarantined": include_quarantined})
    return estimate(spec, gpu_hour_price=gpu_hour_price, include_quarantined=include_quarantined).as_dict()


def run(src: str, dst: str, *, executor: str = "local", address: str | None = None, workers: int | None = None,
        progress: bool = False, **options) -> dict:
    """Upscale everything under `src` into `dst` with a manifest; returns the summary.
    `executor="ray"` distributes it (joining `address`, RAY_ADDRESS, or a local Ray)."""
    spec = _spec(src, dst, options)
    if executor == "local":
        from pipeline.job.local import run_local

        return run_local(spec, progress=progress)
    from pipeline.job.ray import RayOptions, run_ray

    return run_ray(spec, RayOptions(address=address, workers=workers), progress=progress)
