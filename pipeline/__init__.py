"""Batch super-resolution for large image archives.

The Python API lives in `pipeline.api` and is re-exported here; its imports are
lazy, so `import pipeline` stays cheap:

    pipeline.load_model("bicubic" | path | URL)        -> LoadedModel
    pipeline.upscale_image(array, model=..., scale=...) -> array (same dtype and channels)
    pipeline.plan(src, dst, **options)                  -> dict (what a run would do and cost)
    pipeline.run(src, dst, executor="local", **options) -> dict (the run's summary)
"""

__version__ = "0.1.0"

from pipeline.api import load_model, plan, run, upscale_image  # noqa: E402

__all__ = ["load_model", "upscale_image", "plan", "run", "__version__"]
