"""The Ray Serve deployment for real: `serve.run` of the RayService's application builder
on a local Ray (2 CPUs), its HTTP proxy on a free loopback port, the same API as
`upscaler serve` (keys, upscale, readiness)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.serve import keys as serve_keys
from tests.serving import free_port

serve = pytest.importorskip("ray.serve", reason="the Ray Serve deployment needs ray[serve]")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    import ray

    from pipeline.serve.ray_serve import build_app

    keyfile = str(tmp_path_factory.mktemp("keys") / "keys.json")
    token = serve_keys.add_key(keyfile, "web")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"keys_file": keyfile, "models": {"photo": "bicubic"}, "max_batch": 4}),
                  name="upscaler", route_prefix="/")
        yield f"http://127.0.0.1:{port}", token
    finally:
        serve.shutdown()
        ray.shutdown()


def test_the_ray_serve_replica_serves_the_same_api_with_keys(deployed):
    url, token = deployed
    assert httpx.get(url + "/readyz", timeout=30).json() == {"status": "ready", "model": "bicubic"}
    assert httpx.get(url + "/v1/whoami").status_code == 401
    buffer = io.BytesIO()
    Image.fromarray(np.full((10, 12, 3), 120, np.uint8)).save(buffer, format="PNG")
    response = httpx.post(url + "/v1/upscale", params={"scale": "3"}, content=buffer.getvalue(),
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-upscaler-model"] == "bicubic"
    assert Image.open(io.BytesIO(response.content)).size == (36, 30)
    assert "upscaler_images_total 1.0" in httpx.get(url + "/metrics").text


def test_a_bad_setting_fails_the_builder_not_every_replica():
    from pipeline.serve.ray_serve import build_app

    with pytest.raises(ValueError, match="unknown server setting"):
        build_app({"keys_file": "/x", "queue_sise": 4})
    with pytest.raises(ValueError, match="--no-auth is refused on 0.0.0.0"):
        build_app({"no_auth": True})
