"""`upscaler serve` for real: a server process on 127.0.0.1, httpx as the client, the
bundled edsr-x2 on small images. Fidelity is checked against the batch job's own output
for the same files and settings; hostile requests must be refused cheaply and leave
the server serving; overload must give 429s, never 5xx; batching must share forward
calls without changing a byte; SIGTERM must drain and exit 0."""

from __future__ import annotations

import io
import signal
import threading
import time
import zlib

import httpx
import imagecodecs
import numpy as np
import psutil
import pytest
import tifffile
from PIL import Image, ImageCms

from pipeline.serve import keys as serve_keys
from tests.formats.builders import pillow, png_chunk, png_declaring, tiff
from tests.serving import ServerProcess, metric

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAX_UPLOAD = 256 << 10
MAX_PIXELS = 128 * 128
QUEUE = 6


def photo(h: int, w: int, channels: int = 3, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx[..., None] * 7 + yy[..., None] * 5 + np.arange(channels) * 40) % 256 / 255
    return np.clip(base * top * 0.8 + rng.integers(0, top // 8, (h, w, channels)), 0, top).astype(dtype)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def fidelity_inputs() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x013B] = "archive"  # Artist
    return {
        "deep.png": imagecodecs.png_encode(photo(24, 32, 3, np.uint16, seed=1)),  # Pillow writes no 16-bit RGB
        "alpha.png": png_bytes(photo(24, 32, 4, seed=2)),
        "camera.jpg": pillow(Image.fromarray(photo(32, 24, 3, seed=3)), "JPEG", quality=92, exif=exif.tobytes(),
                             icc_profile=SRGB),
        "field.tif": tiff(photo(24, 24, 1, np.uint16, seed=4)[..., 0], geo=True),
    }


@pytest.fixture(scope="module")
def keyfile(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("keys") / "keys.json")
    tokens = {name: serve_keys.add_key(path, name, jobs=name == "admin") for name in ("admin", "plain", "doomed")}
    tokens["slow"] = serve_keys.add_key(path, "slow", rate_per_minute=2)
    tokens["single"] = serve_keys.add_key(path, "single", concurrency=1)
    return path, tokens


@pytest.fixture(scope="module")
def server(keyfile, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    process = ServerProcess("--keys", keyfile[0], "--model", "edsr-x2", "--queue-size", str(QUEUE),
                            "--max-batch", "4", "--batch-wait-ms", "100", "--max-upload-bytes", str(MAX_UPLOAD),
                            "--max-pixels", str(MAX_PIXELS), "--allow-prefix", str(folder / "allowed"),
                            "--allow-prefix", "s3://allowed-bucket/in", log=folder / "server.log")
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def admin(server, keyfile):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {keyfile[1]['admin']}"},
                      timeout=60) as client:
        yield client


def good_request_works(client: httpx.Client) -> None:
    response = client.post("/v1/upscale", content=png_bytes(photo(16, 20)))
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (40, 32)


# ----------------------------------------------------------------------------- fidelity


def test_uploads_come_back_byte_for_byte_as_the_batch_job_writes_them(admin, tmp_path):
    from pipeline import run

    inputs = fidelity_inputs()
    src = tmp_path / "src"
    src.mkdir()
    for name, data in inputs.items():
        (src / name).write_bytes(data)
    summary = run(str(src), str(tmp_path / "dst"), executor="local", model="edsr-x2")
    assert summary["ok"] == len(inputs), summary["failures"]
    for name, data in inputs.items():
        response = admin.post("/v1/upscale", params={"filename": name}, content=data)
        assert response.status_code == 200, (name, response.text)
        assert response.content == (tmp_path / "dst" / name).read_bytes(), name
        assert response.headers["x-upscaler-model"] == "edsr-x2"
        assert response.headers["x-upscaler-scale"] == "2"
        assert float(response.headers["x-upscaler-lr-psnr"]) > 20


def test_served_outputs_keep_bit_depth_alpha_exif_icc_and_rescaled_georeference(admin):
    inputs = fidelity_inputs()
    deep = admin.post("/v1/upscale", content=inputs["deep.png"])
    from pipeline.formats import decode_image

    decoded = decode_image(deep.content)
    assert decoded.pixels.dtype == np.uint16 and decoded.pixels.shape == (48, 64, 3)
    alpha = Image.open(io.BytesIO(admin.post("/v1/upscale", content=inputs["alpha.png"]).content))
    assert alpha.mode == "RGBA" and alpha.size == (64, 48)
    camera = admin.post("/v1/upscale", params={"filename": "camera.jpg"}, content=inputs["camera.jpg"])
    assert camera.headers["content-type"] == "image/jpeg"
    assert camera.headers["content-disposition"] == 'attachment; filename="camera_x2.jpg"'
    image = Image.open(io.BytesIO(camera.content))
    assert image.info["icc_profile"] == SRGB and image.getexif()[0x013B] == "archive"
    field = admin.post("/v1/upscale", content=inputs["field.tif"])
    with tifffile.TiffFile(io.BytesIO(field.content)) as tif:
        page = tif.pages[0]
        assert page.shape == (48, 48) and page.dtype == np.uint16
        assert page.tags[33550].value[:2] == (15.0, 15.0)  # 30 m pixels became 15 m
        assert page.tags[33922].value[3:5] == (500000.0, 4000000.0)


def test_multipart_upload_with_scale_and_format_returns_that_format_and_size(admin):
    files = {"image": ("cat.png", png_bytes(photo(20, 24)), "image/png")}
    response = admin.post("/v1/upscale", params={"scale": "4", "format": "jpeg"}, files=files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["content-disposition"] == 'attachment; filename="cat_x4.jpg"'
    assert (response.headers["x-upscaler-width"], response.headers["x-upscaler-height"]) == ("96", "80")
    assert Image.open(io.BytesIO(response.content)).size == (96, 80)


# ----------------------------------------------------------------------------- public routes


def test_public_routes_health_readiness_models_metrics_schema_and_offline_docs(server, admin):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready", "model": "edsr-x2"}
    models = admin.get("/v1/models").json()
    by_name = {m["name"]: m for m in models["models"]}
    assert by_name["photo"]["model"] == "edsr-x2" and by_name["photo"]["available"]
    assert not by_name["anime"]["available"] and "--model anime=" in by_name["anime"]["reason"]
    assert {"bicubic", "lanczos", "edsr-x2", "edsr-x4"} <= set(by_name)
    assert (models["max_upload_bytes"], models["max_pixels"], models["default"]) == (MAX_UPLOAD, MAX_PIXELS, "photo")
    assert "/v1/upscale" in httpx.get(server.url + "/openapi.json").json()["paths"]
    docs = httpx.get(server.url + "/docs").text
    assert "/openapi.json" in docs and "http://" not in docs and "https://" not in docs
    text = httpx.get(server.url + "/metrics").text
    assert "upscaler_request_seconds_bucket" in text and "upscaler_queue_depth" in text
    cors = httpx.get(server.url + "/v1/whoami", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in cors.headers  # CORS is off without --cors-origin


# ----------------------------------------------------------------------------- auth


def test_no_key_wrong_key_revoked_key_are_401_and_a_key_without_jobs_is_403(server, keyfile):
    path, tokens = keyfile
    url = server.url + "/v1/whoami"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer ups_wrong"}).status_code == 401
    doomed = {"Authorization": f"Bearer {tokens['doomed']}"}
    assert httpx.get(url, headers=doomed).json() == {"name": "doomed", "permissions": ["upscale"], "auth": True}
    from pipeline.cli import main

    assert main(["serve", "keys", "revoke", "doomed", "--keys", path]) == 0  # while the server runs
    refused = httpx.get(url, headers=doomed)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]
    plain = {"Authorization": f"Bearer {tokens['plain']}"}
    job = httpx.post(server.url + "/v1/jobs", headers=plain, json={"src": "x", "dst": "y"})
    assert job.status_code == 403 and "jobs" in job.json()["error"]
    assert httpx.get(server.url + "/v1/jobs", headers=plain).status_code == 403


def test_a_key_over_its_rate_gets_429_with_retry_after(server, keyfile):
    slow = {"Authorization": f"Bearer {keyfile[1]['slow']}"}
    data = png_bytes(photo(16, 16))
    statuses = [httpx.post(server.url + "/v1/upscale", headers=slow, content=data) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["retry-after"]) >= 1 and "rate" in statuses[2].json()["error"]


def test_a_key_over_its_concurrency_gets_429_while_its_first_request_runs(server, keyfile):
    single = {"Authorization": f"Bearer {keyfile[1]['single']}"}
    data = png_bytes(photo(128, 128, seed=7))
    responses = concurrently(2, lambda i: httpx.post(server.url + "/v1/upscale", headers=single, content=data,
                                                     timeout=60))
    assert sorted(r.status_code for r in responses) == [200, 429]
    refused = next(r for r in responses if r.status_code == 429)
    assert "in progress" in refused.json()["error"] and int(refused.headers["retry-after"]) >= 1


def test_keys_cli_prints_the_key_once_and_the_file_holds_only_its_hash(tmp_path, capsys):
    from pipeline.cli import main

    path = str(tmp_path / "keys.json")
    assert main(["serve", "keys", "add", "ci", "--jobs", "--rate", "30", "--concurrency", "2", "--keys", path]) == 0
    token = capsys.readouterr().out.strip()
    text = (tmp_path / "keys.json").read_text()
    assert token.startswith("ups_") and token not in text and serve_keys.digest(token) in text
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0
    assert main(["serve", "keys", "list", "--keys", path]) == 0
    listing = capsys.readouterr().out
    assert "ci" in listing and "upscale,jobs" in listing and token not in listing
    assert main(["serve", "keys", "add", "ci", "--keys", path]) == 2  # one line: the name exists
    assert "exists" in capsys.readouterr().err


def test_no_auth_on_a_public_host_is_refused_in_one_line_with_status_2():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--no-auth", "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--no-auth is refused on 0.0.0.0" in done.stderr


# ----------------------------------------------------------------------------- hostile requests


def test_an_oversized_body_is_413_from_content_length_and_while_streaming(admin):
    big = bytes(MAX_UPLOAD + 1000)
    declared = admin.post("/v1/upscale", content=big)
    assert declared.status_code == 413 and "limit" in declared.json()["error"]

    def chunks():
        for _ in range(5):
            yield bytes(MAX_UPLOAD // 4)

    streamed = admin.post("/v1/upscale", content=chunks())  # chunked: no Content-Length
    assert streamed.status_code == 413
    good_request_works(admin)


def test_pixel_bombs_are_refused_from_the_header_fast_and_without_memory(server, admin):
    rows = 4000
    raw = b"".join(b"\x00" + bytes(rows) for _ in range(rows))  # 16 Mpx of gray zeros: 16 KB compressed
    header = png_chunk(b"IHDR", (rows).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0]))
    bomb = b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    assert len(bomb) < 100_000
    rss = psutil.Process(server.pid).memory_info().rss
    for data in (bomb, png_declaring(30000, 30000)):
        started = time.monotonic()
        response = admin.post("/v1/upscale", content=data)
        assert time.monotonic() - started < 1.0
        assert response.status_code == 413 and "over the limit" in response.json()["error"]
    assert psutil.Process(server.pid).memory_info().rss - rss < 20 << 20
    good_request_works(admin)


@pytest.mark.parametrize("params, content, says", [
    ({}, b"GIF89a but not really an image at all", "decode"),
    ({}, b"hello, world", "not an image"),
    ({"scale": "0"}, None, "scale must be from 1 to 8"),
    ({"scale": "nan"}, None, "finite"),
    ({"scale": "abc"}, None, "number"),
    ({"model": "anime"}, None, "no anime model configured"),
    ({"model": "/etc/passwd"}, None, "unknown model"),
    ({"format": "gif"}, None, "not an output format"),
    ({"format": "jpeg"}, "rgba", "JPEG has no alpha"),
])
def test_bad_images_and_parameters_are_422_with_one_line(admin, params, content, says):
    if content is None:
        content = png_bytes(photo(16, 16))
    elif content == "rgba":
        content = png_bytes(photo(16, 16, 4))
    response = admin.post("/v1/upscale", params=params, content=content)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert says in error and "\n" not in error
    good_request_works(admin)


@pytest.mark.parametrize("body, status, says", [
    ({"src": "{allowed}/../elsewhere", "dst": "{allowed}/out"}, 403, ".."),
    ({"src": "/etc", "dst": "{allowed}/out"}, 403, "outside the allowed prefixes"),
    ({"src": "{allowed}-sibling/x", "dst": "{allowed}/out"}, 403, "outside the allowed prefixes"),
    ({"src": "s3://other-bucket/in", "dst": "s3://allowed-bucket/in/out"}, 403, "outside the allowed prefixes"),
    ({"src": "simplecache::s3://allowed-bucket/in", "dst": "{allowed}/out"}, 403, "chained"),
    ({"src": "{allowed}/in", "dst": "{allowed}/out", "options": {"storage_options": {"anon": True}}}, 400,
     "stay on the server"),
    ({"src": "{allowed}/in", "dst": "{allowed}/out", "options": {"endpoint_url": "http://evil"}}, 400,
     "stay on the server"),
    ({"src": "{allowed}/in", "dst": "{allowed}/out", "storage_options": {"key": "x"}}, 400, "stay on the server"),
    ({"src": "{allowed}/in", "dst": "{allowed}/out", "options": {"scale": "big"}}, 422, "option scale"),
])
def test_jobs_outside_the_prefixes_or_with_client_storage_settings_are_refused(admin, server, body, status, says):
    allowed = server.process.args[server.process.args.index("--allow-prefix") + 1]
    body = {k: (v.format(allowed=allowed) if isinstance(v, str) else v) for k, v in body.items()}
    response = admin.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    good_request_works(admin)


# ----------------------------------------------------------------------------- load


def concurrently(count: int, send) -> list:
    barrier, results = threading.Barrier(count), [None] * count

    def one(index):
        barrier.wait()
        results[index] = send(index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_equal_shape_requests_share_forward_calls_and_match_unbatched_results(server, admin, keyfile):
    images = [png_bytes(photo(64, 64, seed=10 + i)) for i in range(4)]
    alone = [admin.post("/v1/upscale", content=data).content for data in images]  # one at a time: batches of 1
    batches, images_in = metric(server.url, "upscaler_batches_total"), metric(server.url, "upscaler_batch_images_total")
    headers = {"Authorization": f"Bearer {keyfile[1]['admin']}"}
    responses = concurrently(4, lambda i: httpx.post(server.url + "/v1/upscale", headers=headers, content=images[i],
                                                     timeout=60))
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.content for r in responses] == alone
    assert metric(server.url, "upscaler_batch_images_total") - images_in == 4
    assert metric(server.url, "upscaler_batches_total") - batches < 4


def test_overload_gives_429_with_retry_after_no_5xx_and_every_accepted_answer_is_right(server, admin, keyfile):
    data = png_bytes(photo(96, 96, seed=5))
    expected = admin.post("/v1/upscale", content=data).content
    headers = {"Authorization": f"Bearer {keyfile[1]['admin']}"}
    health: list[float] = []
    done = threading.Event()

    def probe():  # the event loop never runs the model: health checks stay fast under load
        while not done.is_set():
            started = time.monotonic()
            assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
            health.append(time.monotonic() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        responses = concurrently(3 * QUEUE, lambda i: httpx.post(server.url + "/v1/upscale", headers=headers,
                                                                  content=data, timeout=120))
    finally:
        done.set()
        prober.join()
    assert len(health) >= 3 and max(health) < 1.0
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) >= QUEUE
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and "queue is full" in r.json()["error"]
        else:
            assert r.content == expected
    assert httpx.get(server.url + "/healthz").status_code == 200
    good_request_works(admin)


# ----------------------------------------------------------------------------- SIGTERM


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_with_503_and_exits_0(tmp_path):
    """Also on this server: CORS for its one --cors-origin only, and jobs disabled without --allow-prefix."""
    process = ServerProcess("--no-auth", "--model", "edsr-x2", "--max-batch", "1", "--cors-origin",
                            "http://page.example", log=tmp_path / "server.log")
    process.wait_ready()
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(process.url + "/v1/upscale", headers={"Origin": "http://page.example", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "http://page.example"
    other = httpx.options(process.url + "/v1/upscale", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    disabled = httpx.post(process.url + "/v1/jobs", json={"src": str(tmp_path), "dst": str(tmp_path / "out")})
    assert disabled.status_code == 403 and "without --allow-prefix" in disabled.json()["error"]
    images = [png_bytes(photo(160, 160, seed=20 + i)) for i in range(4)]
    results: list = [None] * len(images)

    def send(index):
        results[index] = httpx.post(process.url + "/v1/upscale", content=images[index], timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while metric(process.url, "upscaler_queue_depth") < len(images) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.process.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    late = httpx.post(process.url + "/v1/upscale", content=images[0], timeout=30)
    for t in threads:
        t.join()
    assert late.status_code == 503 and "shutting down" in late.json()["error"]
    assert [r.status_code for r in results] == [200] * len(images)
    assert all(Image.open(io.BytesIO(r.content)).size == (320, 320) for r in results)
    assert process.process.wait(timeout=60) == 0
    process.stop()
