"""Fault injection (prints JSON): faults injected, images lost, duplicated rows.

Scenarios, each on a fresh destination with the same 32 source images:
- kill_one_worker / kill_workers: SIGKILL a Ray actor process (once / three times) mid-run;
- storage_resets: every 7th connection to the S3 server is reset (through a TCP proxy);
- storage_outage: the S3 endpoint goes away for 3 s mid-run and comes back on the same port;
- driver_killed: SIGKILL the driver mid-run, then run the same command again;
- concurrent_runs: two runs on the same destination at once;
- storage_stays_down (local executor) / storage_stays_down_ray: the S3 endpoint goes
  away mid-run and stays away until the run has given up (exit 4, rows spooled
  locally); then it comes back and `upscaler rerun` completes the job.

"lost" = source images without an `ok` row and a decodable output at the end;
"duplicates" = images with more than one `ok` row in the same run.

    python benchmarks/faults.py [--images 32] [--only storage_stays_down]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

SRC_BUCKET = "faults"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlakyProxy:
    """A TCP proxy in front of the S3 server: can refuse everything (an outage) or
    reset every Nth connection (transient errors), and keeps its port throughout."""

    def __init__(self, target_port: int):
        self.port, self.target = free_port(), target_port
        self.down, self.reset_every, self.connections, self.faults = False, 0, 0, 0
        self.live: list[socket.socket] = []
        self.lock = threading.Lock()  # a connection is either refused or in `live` when cut() runs
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Go down now: refuse new connections and end the open ones (pooled
        keep-alive connections would otherwise keep working). shutdown(), not
        close(): it wakes the pipe threads, and no file descriptor is reused
        under a thread still reading it."""
        with self.lock:
            self.down = True
            for sock in self.live:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.live.clear()

    def _accept(self):
        while True:
            client, _ = self.server.accept()
            with self.lock:
                self.connections += 1
                if self.down or (self.reset_every and self.connections % self.reset_every == 0):
                    self.faults += 1
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    client.close()  # RST
                    continue
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.live += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def png(i: int, size: int = 96) -> bytes:
    rng = np.random.default_rng(i)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def slow_model(path: Path) -> str:
    import torch

    from pipeline.models import LoadedModel, save_model
    from pipeline.models.edsr.arch import EDSR

    torch.manual_seed(0)
    module = EDSR(num_in_ch=3, num_out_ch=3, num_feat=32, num_block=8, scale=2)
    save_model(LoadedModel(name="faults", arch="EDSR", module=module, scale=2, in_channels=3, out_channels=3,
                           config={"num_feat": 32, "num_block": 8, "res_scale": 1.0, "scale": 2}), str(path))
    return str(path)


def command(src: str, dst: str, model: str, options: list[str], executor: str = "ray") -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", src, dst, "--model", model, "--executor", executor,
            "--workers", "1", "--batch-size", "2", "--json", "--no-progress", *options]


def actor_pids(driver_pid: int) -> list[int]:
    """The UpscaleWorker actors of this benchmark's own run: descendants of its driver
    (which starts its own local Ray), never another user's processes on the machine."""
    import psutil

    try:
        children = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if "UpscaleWorker" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


def audit(fs, dst: str, count: int) -> dict:
    """Lost images and duplicated ok rows, from the manifest and the outputs."""
    import pyarrow.parquet as pq

    from pipeline import formats

    fs.invalidate_cache()
    root = dst.removeprefix("s3://")
    rows = []
    for path in fs.glob(f"{root}/_manifest/run_id=*/*.parquet"):
        run_id = path.split("run_id=")[1].split("/")[0]
        with fs.open(path, "rb") as f:
            rows += [dict(r, run_id=run_id) for r in pq.read_table(f).to_pylist()]
    ok = [r for r in rows if r["status"] == "ok"]
    per_run = Counter((r["run_id"], r["image_id"]) for r in ok)
    good = set()
    for key in {r["image_id"] for r in ok}:
        try:
            formats.decode_image(fs.cat(f"{root}/{key}"))
            good.add(key)
        except Exception:
            pass
    temporary = [p for p in fs.find(root) if p.endswith(".tmp") or "/_plans/" in p]
    return {"lost": count - len(good), "duplicates": sum(n - 1 for n in per_run.values() if n > 1),
            "rows": len(rows), "leftover_temporary_objects": len(temporary)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--only", action="append", default=[], help="run only these scenarios (repeatable)")
    args = parser.parse_args()
    from moto.server import ThreadedMotoServer
    import s3fs
    import tempfile

    s3_port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    server.start()
    proxy = FlakyProxy(s3_port)
    os.environ.update(AWS_ACCESS_KEY_ID="faults", AWS_SECRET_ACCESS_KEY="faults-secret", AWS_DEFAULT_REGION="us-east-1",
                      UPSCALER_SPOOL=tempfile.mkdtemp(prefix="faults-spool-"))
    endpoint = f"http://127.0.0.1:{proxy.port}"
    fs = s3fs.S3FileSystem(endpoint_url=f"http://127.0.0.1:{s3_port}")
    fs.mkdir(SRC_BUCKET)
    for i in range(args.images):
        fs.pipe(f"{SRC_BUCKET}/in/img{i:03d}.png", png(i))
    storage = [f"--storage-option=endpoint_url={endpoint}"]
    model = slow_model(Path(tempfile.mkdtemp()) / "faults.safetensors")
    src = f"s3://{SRC_BUCKET}/in"
    report = {"benchmark": "faults", "images": args.images, "scenarios": {}}

    def outputs_so_far(dst):
        try:
            fs.invalidate_cache()
            return len(fs.glob(f"{dst.removeprefix('s3://')}/*.png"))
        except Exception:
            return 0

    def scenario(name, executor="ray", kills=0, resets=0, outage=0.0, kill_driver=False, concurrent=False,
                 stays_down=False):
        if args.only and name not in args.only:
            return
        dst = f"s3://{SRC_BUCKET}/out-{name}"
        argv = command(src, dst, model, storage + (["--storage-failures", "3"] if stays_down else []), executor)
        started, faults = time.time(), 0
        proxy.reset_every, proxy.faults = resets, 0
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)]
        if concurrent:
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        deadline = time.time() + 300
        while procs[0].poll() is None and time.time() < deadline:
            done = outputs_so_far(dst)
            if kills and done >= (args.images * (faults + 1)) // (kills + 2):
                for pid in actor_pids(procs[0].pid)[:1]:
                    os.kill(pid, signal.SIGKILL)
                    faults += 1
                    kills -= 1
            if outage and done >= args.images // 3:
                proxy.down = True
                time.sleep(outage)
                proxy.down, outage = False, 0.0
                faults += 1
            if stays_down and not proxy.down and done >= args.images // 3:
                proxy.cut()  # and it stays down until the run has given up
                faults += 1
            if kill_driver and done >= args.images // 3:
                procs[0].send_signal(signal.SIGKILL)
                faults += 1
                kill_driver = False
                procs[0].wait()
                procs[0] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(0.2)
        codes = [p.wait() for p in procs]
        extra = {}
        if stays_down:  # storage comes back; `upscaler rerun` finishes the job
            proxy.down = False
            summary = json.loads(procs[0].stdout.read() or "{}")
            extra = {"gave_up_after_s": round(time.time() - started, 1), "spooled_files": summary.get("spooled", {}).get("files"),
                     "not_attempted": sum("not attempted" in f["error"] for f in summary.get("failures", []))}
            rerun = [sys.executable, "-m", "pipeline.cli", "rerun", dst, "--executor", executor, "--json",
                     "--no-progress", *storage]
            codes.append(subprocess.run(rerun, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).returncode)
        proxy.reset_every = 0
        faults += proxy.faults
        result = {"faults_injected": faults, "exit_codes": codes, "seconds": round(time.time() - started, 1),
                  **extra, **audit(fs, dst, args.images)}
        report["scenarios"][name] = result
        print(f"{name}: {result}", file=sys.stderr)

    scenario("kill_one_worker", kills=1)
    scenario("kill_workers", kills=3)
    scenario("storage_resets", executor="local", resets=7)
    scenario("storage_outage", executor="local", outage=3.0)
    scenario("driver_killed", executor="local", kill_driver=True)
    scenario("concurrent_runs", executor="local", concurrent=True)
    scenario("storage_stays_down", executor="local", stays_down=True)
    scenario("storage_stays_down_ray", executor="ray", stays_down=True)
    scenarios = report["scenarios"].values()
    report["total"] = {"faults_injected": sum(s["faults_injected"] for s in scenarios),
                       "images_lost": sum(s["lost"] for s in scenarios),
                       "duplicates": sum(s["duplicates"] for s in scenarios),
                       "target": {"images_lost": 0, "duplicates": 0}}
    json.dump(report, sys.stdout, indent=2)
    print()
    server.stop()


if __name__ == "__main__":
    main()
