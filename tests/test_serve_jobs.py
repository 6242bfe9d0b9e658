"""Batch jobs over HTTP for real: `upscaler run` processes started by a server process,
followed to the end, their report opened through its capability URL, one cancelled
mid-way (SIGTERM: its finished images keep their rows) and completed by `upscaler rerun`."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from PIL import Image

from pipeline.serve import keys as serve_keys
from tests.serving import ServerProcess


def folder_of_images(path, count: int, size: int) -> None:
    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path / f"img{index:03d}.png")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs") / "allowed"


@pytest.fixture(scope="module")
def client(allowed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    keyfile = str(folder / "keys.json")
    token = serve_keys.add_key(keyfile, "ops", jobs=True)
    allowed.mkdir()
    process = ServerProcess("--keys", keyfile, "--model", "bicubic", "--allow-prefix", str(allowed),
                            "--max-jobs", "2", "--time-limit", "0.2", log=folder / "server.log")
    try:
        process.wait_ready()
        with httpx.Client(base_url=process.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            c.server_log = process.log
            yield c
    finally:
        process.stop()


def wait_for(client, job_id: str, done, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job}")


def test_a_job_runs_to_succeeded_with_its_counts_and_a_report_that_opens_without_a_key(client, allowed):
    folder_of_images(allowed / "small", 3, 24)
    created = client.post("/v1/jobs", json={"src": str(allowed / "small"), "dst": str(allowed / "small-out"),
                                            "options": {"scale": 2, "format": "png"}})
    assert created.status_code == 201, created.text
    job = wait_for(client, created.json()["id"], lambda j: j["state"] not in ("queued", "running"))
    assert job["state"] == "succeeded", job
    assert (job["total"], job["done"], job["progress"]) == (3, 3, 1.0)
    assert job["counts"] == {"ok": 3, "failed": 0, "skipped": 0} and job["error"] is None
    assert Image.open(allowed / "small-out" / "img000.png").size == (48, 48)
    report = httpx.get(str(client.base_url) + job["report_url"])  # a plain link: no Authorization header
    assert report.status_code == 200 and "upscaler run " + job["id"] in report.text
    assert client.get("/v1/jobs").json()["jobs"][0]["id"] == job["id"]
    log = client.server_log.read_text()
    assert "GET /reports/<token>/index.html" in log and job["report_url"].split("/")[2] not in log
    for token in ("x" * 22, "%C3%A9"):
        assert httpx.get(f"{client.base_url}/reports/{token}/index.html").status_code == 404
    assert httpx.get(str(client.base_url) + job["report_url"].replace("index.html", "%2e%2e/%2e%2e/keys.json")).status_code == 404


def test_a_cancelled_job_keeps_its_finished_rows_and_rerun_completes_the_rest(client, allowed):
    count = 32
    folder_of_images(allowed / "many", count, 96)
    dst = allowed / "many-out"
    created = client.post("/v1/jobs", json={"src": str(allowed / "many"), "dst": str(dst),
                                            "options": {"model": "edsr-x2", "compress_level": 9}})
    job_id = created.json()["id"]
    running = wait_for(client, job_id, lambda j: j["done"] >= 2 or j["state"] != "running")
    assert running["state"] == "running" and running["total"] == count and 0 < running["progress"] < 1
    cancelling = client.delete(f"/v1/jobs/{job_id}")
    assert cancelling.status_code == 202 and cancelling.json()["state"] == "cancelling"
    job = wait_for(client, job_id, lambda j: j["state"] != "cancelling")
    assert job["state"] == "cancelled" and job["finished_at"] is not None
    assert 2 <= job["counts"]["ok"] < count  # the finished images' rows were written
    from pipeline.cli import main
    from pipeline.ops.rerun import latest_rows
    from pipeline import store

    assert main(["rerun", str(dst), "--executor", "local"]) == 0
    rows = latest_rows(*store.open_location(str(dst)))
    assert len(rows) == count and {r["status"] for r in rows} == {"ok"}
    assert len(list(dst.glob("*.png"))) == count


def test_an_image_over_the_time_limit_is_504_and_the_server_goes_on(client):
    import io

    def png(size: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    slow = client.post("/v1/upscale", params={"model": "edsr-x4"}, content=png(160))
    assert slow.status_code == 504 and "time limit" in slow.json()["error"]
    quick = client.post("/v1/upscale", content=png(16))
    assert quick.status_code == 200 and Image.open(io.BytesIO(quick.content)).size == (64, 64)
