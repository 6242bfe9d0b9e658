"""`upscaler serve`: super-resolution over HTTP, with the batch job's fidelity.

    config     ServeConfig: the settings, checked before anything starts
    app        create_app(config) -> FastAPI: the routes, the service they share
    single     one upload's journey through the job's stages (decode, infer, encode, score)
    batching   inference threads owning the Upscalers; equal-shape requests share a call
    presets    which model a request names (photo, anime, the named models)
    keys       API keys: hashes in a file, re-read when it changes
    limits     per-key rate and concurrency, the admission queue, the body limit
    upload     the image in a raw or multipart body, in memory
    errors     ApiError: a status and one line, as every refusal is answered
    docs       the offline /docs page
    jobs       batch jobs as `upscaler run` processes (run_job), progress, reports
    prefixes   where jobs may read and write
    metrics    Prometheus counters, gauges, histograms
    server     uvicorn with SIGTERM draining
    ray_serve  the same app as a Ray Serve deployment

Imports are lazy: `upscaler serve --help` and a refused setting import no torch or FastAPI.
"""

__all__ = ["create_app", "ServeConfig"]


def __getattr__(name):
    if name == "create_app":
        from pipeline.serve.app import create_app

        return create_app
    if name == "ServeConfig":
        from pipeline.serve.config import ServeConfig

        return ServeConfig
    raise AttributeError(name)
