"""Service benchmark: `upscaler serve` under bounded loopback load, against the engine's own speed.

One server process (`--no-auth` on 127.0.0.1, the engine in-process) and, in this
process, asyncio httpx clients:

- engine:     Upscaler.upscale on the same decoded images, same torch thread count (the
              compute the service wraps), one image per call and `--max-batch` per call,
              before, between and after the service phases; each phase is compared with
              the fastest engine figure beside it (a shared machine's speed drifts);
- load:       `--clients` concurrent clients send `--requests` requests; every answer
              is checked byte for byte against the image's first (unbatched) answer;
- overload:   waves of 2 x `--queue-size` simultaneous requests: 429s with Retry-After
              are expected, 5xx are not; latency of the accepted ones must stay bounded;
- unbatched:  the load phase again on a server started with `--max-batch 1`.

RSS of the server before and after (no growth), throughput (images/s), p50/p95/p99 latency,
and the engine's speed inside the server during each phase (images over the seconds spent in
Upscaler.upscale: immune to the drift of a shared machine, which the separate figures are not).
Prints one JSON object. Images: scikit-image's photographs, cropped to `--size` pixels.

    python benchmarks/serve.py [--requests 300] [--clients 16] [--size 128] [--model edsr-x2]
                               [--queue-size 32] [--max-batch 8] [--overload-waves 3] [--engine-images 48]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photos(count: int, size: int) -> list[bytes]:
    import skimage.data

    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry"]
    files = []
    for index in range(count):
        pixels = getattr(skimage.data, names[index % len(names)])()[..., :3]
        y = (index // len(names)) * size % max(1, pixels.shape[0] - size)
        crop = pixels[y : y + size, :size]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(crop)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def engine_speed(files: list[bytes], model_name: str, count: int, batch: int) -> dict:
    """Images/s of Upscaler.upscale on the decoded images: one per call, and `batch` per
    call (what the service's batches do); `best` is the faster, the reference."""
    import torch

    from pipeline import formats
    from pipeline.inference.engine import Upscaler
    from pipeline.models import load_model

    upscaler = Upscaler(load_model(model_name))
    images = [formats.decode_image(d).pixels for d in files]
    upscaler.upscale(images[:1])  # warm-up
    speeds = {}
    for per_call in (1, batch):
        started = time.perf_counter()
        for index in range(0, count, per_call):
            upscaler.upscale([images[(index + k) % len(images)] for k in range(per_call)])
        speeds[f"images_per_second_{per_call}_per_call"] = round(count / (time.perf_counter() - started), 3)
    return {"images": count, **speeds, "best": max(speeds.values()), "torch_threads": torch.get_num_threads()}


class Server:
    def __init__(self, args, max_batch: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--no-auth", "--port", str(self.port), "--model",
             args.model, "--queue-size", str(args.queue_size), "--max-batch", str(max_batch)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def rss_mib(self) -> float:
        return round(psutil.Process(self.process.pid).memory_info().rss / 2**20, 1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)


async def send_all(url: str, files: list[bytes], expected: list[bytes] | None, clients: int, requests: int) -> dict:
    """`requests` requests over `clients` concurrent connections; statuses, latencies, wrong answers."""
    latencies, statuses, wrong = [], [], 0
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient):
        nonlocal wrong
        for index in counter:
            data = files[index % len(files)]
            started = time.perf_counter()
            response = await http.post(url + "/v1/upscale", content=data)
            statuses.append(response.status_code)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
                if expected is not None and response.content != expected[index % len(files)]:
                    wrong += 1
            elif response.status_code == 429 and int(response.headers.get("retry-after", "0")) < 1:
                wrong += 1  # a 429 must say when to come back

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    seconds = time.perf_counter() - started
    ok = statuses.count(200)
    return {"requests": requests, "clients": clients, "seconds": round(seconds, 3), "ok": ok,
            "rejected_429": statuses.count(429), "errors": sum(s >= 500 or s not in (200, 429) for s in statuses),
            "wrong_or_lost": wrong + (requests - len(statuses)), "images_per_second": round(ok / seconds, 3),
            **percentiles(latencies)}


def server_counters(url: str) -> dict:
    wanted = ("upscaler_batches_total", "upscaler_batch_images_total", "upscaler_infer_seconds_sum")
    lines = [line.split() for line in httpx.get(url + "/metrics").text.splitlines() if line.startswith(wanted)]
    return {name: float(value) for name, value in lines if name in wanted}


def engine_inside(before: dict, after: dict, phase: dict) -> dict:
    """The engine's speed during the phase, in the server itself: images over the seconds its
    inference threads spent in Upscaler.upscale (the same images, threads and moment as the
    service figure, so the machine's drift cancels); `busy` is the model's share of the wall time."""
    images = after["upscaler_batch_images_total"] - before["upscaler_batch_images_total"]
    seconds = after["upscaler_infer_seconds_sum"] - before["upscaler_infer_seconds_sum"]
    calls = after["upscaler_batches_total"] - before["upscaler_batches_total"]
    rate = images / seconds
    return {"images_per_second": round(rate, 3), "images_per_call": round(images / calls, 2),
            "service_vs_engine": round(phase["images_per_second"] / rate, 3)}


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"latency_p50": round(float(p50), 3), "latency_p95": round(float(p95), 3),
            "latency_p99": round(float(p99), 3), "latency_max": round(max(latencies), 3)}


async def overload(url: str, files, expected, waves: int, concurrent: int) -> dict:
    results = [await send_all(url, files, expected, concurrent, concurrent) for _ in range(waves)]
    latencies_ok = sum(r["ok"] for r in results)
    return {"waves": waves, "concurrent": concurrent, "ok": latencies_ok,
            "rejected_429": sum(r["rejected_429"] for r in results), "errors": sum(r["errors"] for r in results),
            "wrong_or_lost": sum(r["wrong_or_lost"] for r in results),
            "latency_p99_worst_wave": max(r.get("latency_p99", 0) for r in results),
            "latency_max": max(r.get("latency_max", 0) for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=12, help="distinct images the requests cycle through")
    parser.add_argument("--model", default="edsr-x2")
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--overload-waves", type=int, default=3)
    parser.add_argument("--engine-images", type=int, default=48)
    args = parser.parse_args()
    files = photos(args.images, args.size)
    report = {"benchmark": "serve", "model": args.model, "image_size": args.size, "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "queue_size": args.queue_size}
    # The engine is measured before, between and after the service's phases: a shared machine's
    # speed drifts by minutes, so each phase is compared with the faster engine figure beside it.
    engine = [engine_speed(files, args.model, args.engine_images, args.max_batch)]

    server = Server(args, args.max_batch)
    expected = [httpx.post(server.url + "/v1/upscale", content=d, timeout=120).content for d in files]  # unbatched
    asyncio.run(send_all(server.url, files, expected, args.clients, 2 * args.clients))  # warm-up: pools, arenas
    rss_before = server.rss_mib()
    inside = server_counters(server.url)
    report["load"] = asyncio.run(send_all(server.url, files, expected, args.clients, args.requests))
    report["load"]["engine_inside_server"] = engine_inside(inside, server_counters(server.url), report["load"])
    rss_after_load = server.rss_mib()
    report["overload"] = asyncio.run(overload(server.url, files, expected, args.overload_waves, 2 * args.queue_size))
    report["server_rss_mib"] = {"before": rss_before, "after_load": rss_after_load, "after_overload": server.rss_mib()}
    batches = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
               if line.startswith(("upscaler_batches_total ", "upscaler_batch_images_total "))]
    report["batching"] = {line.split()[0]: float(line.split()[1]) for line in batches}
    report["sigterm_exit_status"] = server.stop()
    engine.append(engine_speed(files, args.model, args.engine_images, args.max_batch))

    server = Server(args, 1)
    inside = server_counters(server.url)
    report["load_unbatched"] = asyncio.run(send_all(server.url, files, expected, args.clients, args.requests))
    report["load_unbatched"]["engine_inside_server"] = engine_inside(inside, server_counters(server.url),
                                                                     report["load_unbatched"])
    server.stop()
    engine.append(engine_speed(files, args.model, args.engine_images, args.max_batch))
    report["engine"] = engine
    batched_ref = max(engine[0]["best"], engine[1]["best"])
    unbatched_ref = max(engine[1]["best"], engine[2]["best"])
    report["service_vs_engine_throughput"] = round(report["load"]["images_per_second"] / batched_ref, 3)
    report["unbatched_service_vs_engine_throughput"] = round(report["load_unbatched"]["images_per_second"]
                                                             / unbatched_ref, 3)
    report["targets"] = {"service_vs_engine_throughput": ">= 0.8", "errors": "0 (429s only in overload)",
                         "wrong_or_lost": "0", "server_rss": "no growth"}
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
