"""The same app as a Ray Serve deployment: each replica holds a model (on a GPU where
the deployment asks for one: `ray_actor_options: {num_gpus: 1}`) and runs the app of
`upscaler serve` unchanged, batching included; Ray Serve's proxy spreads requests over
the replicas and scales them (deploy/rayservice.yaml).

    serve run pipeline.serve.ray_serve:build_app keys_file=/etc/upscaler/keys.json

`build_app(args)` is Ray Serve's application builder: `args` are ServeConfig's fields
(the YAML's `args:`). The proxy listens for the whole cluster, so `host` defaults to
0.0.0.0 here and `no_auth` is refused unless the operator says the proxy is loopback.
Each replica keeps its own /metrics and its own jobs: leave `allow_prefixes` empty
(batch work goes to a RayJob) unless the deployment has a single replica.
"""

from __future__ import annotations

from ray import serve

from pipeline.serve.config import ServeConfig


@serve.deployment(name="upscaler", max_ongoing_requests=64, graceful_shutdown_timeout_s=60,
                  health_check_period_s=10)
@serve.ingress()
class UpscalerDeployment:
    def __init__(self, settings: dict):
        self.config = ServeConfig.from_dict(settings)
        self.built = None

    def __serve_build_asgi_app__(self):
        from pipeline.serve.app import create_app

        self.built = create_app(self.config)
        return self.built

    def check_health(self) -> None:
        """Ray Serve replaces a replica whose model could not be loaded."""
        if self.built is not None and self.built.state.service.batcher.load_error:
            raise RuntimeError(self.built.state.service.batcher.load_error)


def build_app(args: dict):
    settings = {"host": "0.0.0.0", **dict(args)}
    ServeConfig.from_dict(settings)  # a bad setting fails `serve run`/`serve deploy`, not every replica
    return UpscalerDeployment.bind(settings)
