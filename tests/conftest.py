"""Shared fixtures: a real S3 server (moto in server mode on 127.0.0.1, as s3fs's own tests do)."""

import socket

import pytest

S3_KEY, S3_SECRET = "test-key-id", "test-secret-do-not-log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Endpoint URL of a moto S3 server that lives for the test session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, request):
    """(storage options, bucket URL) of a fresh bucket on the S3 server."""
    import s3fs

    options = {"endpoint_url": s3_server, "key": S3_KEY, "secret": S3_SECRET}
    fs = s3fs.S3FileSystem(**options)
    bucket = "b-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return options, f"s3://{bucket}"


def save_edsr(path, *, feat: int = 8, blocks: int = 2, scale: int = 2, seed: int = 0) -> str:
    """A real CNN checkpoint (EDSR, seeded random weights): unlike bicubic, its output shows
    tiling, batching and precision; wider and deeper makes it slow enough to interrupt."""
    import torch

    from pipeline.models import LoadedModel, save_model
    from pipeline.models.edsr.arch import EDSR

    torch.manual_seed(seed)
    module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=feat, num_block=blocks, scale=scale)
    save_model(LoadedModel(name="edsr-test", arch="EDSR", module=module, scale=scale, in_channels=3, out_channels=3,
                           config={"num_feat": feat, "num_block": blocks, "res_scale": 1.0, "scale": scale}), str(path))
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def private_calibration_cache(tmp_path_factory):
    """A calibration the developer stored (`upscaler calibrate`) changes automatic tiles:
    tests (and the processes they start) see an empty cache of their own."""
    import os

    previous = os.environ.get("UPSCALER_CACHE")
    os.environ["UPSCALER_CACHE"] = str(tmp_path_factory.mktemp("calibration"))
    yield
    if previous is None:
        os.environ.pop("UPSCALER_CACHE", None)
    else:
        os.environ["UPSCALER_CACHE"] = previous
