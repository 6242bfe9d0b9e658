"""Batch jobs started over HTTP: each one is `upscaler run SRC DST` in a process of its
own (pipeline/serve/run_job.py), on the Ray executor when the server was given a
cluster (`--address`), else the local one.

A process of its own isolates the server from the job (memory, a crash) and makes
cancelling the CLI's own way out: SIGTERM, on which the run finishes the images being
written, writes their rows and a run record marked interrupted (exit 143); `upscaler
rerun DST` completes it later. The job's id is its run id, so `upscaler runs DST` and
the manifest name it the same way.

Progress is the run's own progress bar (images done of the to-do list, and failures),
read from the process's stderr; the final counts are its JSON summary, or, for a job
that was stopped, its rows in the manifest (store/manifest.py). The report is
`upscaler report`'s page (ops/report.py), written when the job ends, and again on
demand while it runs, served under a capability URL (128 random bits per job).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import posixpath
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from pipeline import store
from pipeline.errors import one_line_text
from pipeline.serve.config import MAX_SCALE
from pipeline.serve.errors import ApiError
from pipeline.serve.prefixes import check_location

log = logging.getLogger(__name__)

REPORT_FILE = re.compile(r"index\.html|crops/\d{3}\.png")
REPORT_REFRESH_SECONDS = 10.0
KEEP_JOBS = 1000  # finished jobs remembered (the oldest are forgotten first)
STOP_SECONDS = 60.0  # SIGTERM to SIGKILL, at server shutdown
_BAR = re.compile(r"(\d+)/(\d+) \[([^\]\r\n]*)")
_FAILED = re.compile(r"(\d+) failed$")
STATES_DONE = ("succeeded", "failed", "cancelled")
STORAGE_WORDS = ("storage", "endpoint", "credential", "key", "secret", "token", "anon", "profile", "client_kwargs")


def _number(low: float, high: float):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"a number from {low:g} to {high:g}")
        return value
    return check


def _integer(low: int, high: int):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return value
    return check


def _choice(*choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return value
    return check


def _globs(value):
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in values) \
            or len(values) > 32:
        raise ValueError("a glob or a list of up to 32 globs")
    return values


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _model(value):
    if not isinstance(value, str) or not value:
        raise ValueError("a model preset's name")
    return value


# The options a client may give, each checked, with its `upscaler run` flag. Anything
# else (storage options, endpoints, credentials, executor settings) is a 400.
OPTIONS = {
    "scale": (_number(1, MAX_SCALE), "--scale"),
    "model": (_model, "--model"),
    "format": (_choice("png", "tiff", "tif", "jpeg", "jpg", "webp"), "--format"),
    "tile": (_integer(0, 8192), "--tile"),
    "overlap": (_integer(0, 512), "--overlap"),
    "precision": (_choice("auto", "fp32", "fp16", "bf16"), "--precision"),
    "quality": (_integer(1, 100), "--quality"),
    "compress_level": (_integer(0, 9), "--compress-level"),
    "include": (_globs, "--include"),
    "exclude": (_globs, "--exclude"),
    "band_mode": (_choice("rgb+gray", "each"), "--band-mode"),
    "radiometric": (_choice("auto", "minmax", "dtype"), "--radiometric"),
    "keep_extension": (_flag, "--keep-extension"),
    "force": (_flag, "--force"),
    "limit": (_integer(1, 10**9), "--limit"),
    "sample": (_integer(1, 10**9), "--sample"),
}


def check_request(body, prefixes: tuple) -> tuple[str, str, dict]:
    """(src, dst, options) of a POST /v1/jobs body, or the ApiError that refuses it."""
    if not isinstance(body, dict):
        raise ApiError(400, 'the body must be a JSON object {"src": ..., "dst": ..., "options": {...}}')
    extra = sorted(set(body) - {"src", "dst", "options"})
    if extra:
        raise ApiError(400, f"unexpected field(s) {', '.join(extra)}: a job takes src, dst and options; storage "
                            "settings and credentials stay on the server")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "options must be a JSON object")
    for name, value in options.items():
        if name not in OPTIONS:
            why = ("storage settings and credentials stay on the server" if any(w in name.lower() for w in STORAGE_WORDS)
                   else f"allowed: {', '.join(OPTIONS)}")
            raise ApiError(400, f"option {name!r} is not accepted ({why})")
        try:
            OPTIONS[name][0](value)
        except ValueError as error:
            raise ApiError(422, f"option {name}: expected {error}") from None
    src = check_location(body.get("src"), prefixes, "src")
    dst = check_location(body.get("dst"), prefixes, "dst")
    return src, dst, options


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    src: str
    dst: str
    options: dict
    argv: list
    state: str = "queued"
    created_at: str = field(default_factory=now_text)
    finished_at: str | None = None
    total: int | None = None
    done: int = 0
    counts: dict = field(default_factory=lambda: {"ok": 0, "failed": 0, "skipped": 0})
    error: str | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))  # 128 bits
    report: bool = False  # a report page exists (or can be made: rows exist)
    report_made: float = 0.0
    process: subprocess.Popen | None = None
    cancel_requested: bool = False
    stderr_tail: str = ""

    def public(self) -> dict:
        progress = None
        if self.total is not None:
            progress = 1.0 if self.total == 0 else min(1.0, self.done / self.total)
        return {"id": self.id, "state": self.state, "src": self.src, "dst": self.dst, "options": self.options,
                "created_at": self.created_at, "finished_at": self.finished_at, "total": self.total,
                "done": self.done, "counts": dict(self.counts), "progress": progress,
                "report_url": f"/reports/{self.token}/index.html" if self.report or self.state == "running" else None,
                "error": self.error}


class JobManager:
    def __init__(self, config, presets, metrics):
        self.config, self.presets, self.metrics = config, presets, metrics
        self.jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._closing = False

    # ------------------------------------------------------------------ API

    def create(self, body) -> Job:
        src, dst, options = check_request(body, self.config.allow_prefixes)
        if "model" in options:
            spec = self.presets.spec_for(options["model"], options.get("scale"))
        else:
            spec = self.presets.spec_for("photo", options.get("scale"))
        run_id = store.new_run_id()
        argv = ["run", src, dst, "--run-id", run_id, "--json", "--progress", "--model", spec]
        for name, value in options.items():
            if name == "model":
                continue
            flag = OPTIONS[name][1]
            if isinstance(value, bool):
                argv += [flag] if value else []
            elif isinstance(value, list):
                for item in value:
                    argv += [f"{flag}={item}"]
            else:
                argv += [f"{flag}={value}"]
        if self.config.address:
            argv += ["--executor", "ray", "--address", self.config.address]
        else:
            argv += ["--executor", "local"]
        job = Job(id=run_id, src=src, dst=dst, options=options, argv=argv)
        with self._lock:
            if self._closing:
                raise ApiError(503, "the server is shutting down")
            self.jobs[job.id] = job
            self._forget_old()
            self._start_next()
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self.jobs.values(), key=lambda j: j.created_at + j.id, reverse=True)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self.get(job_id)
            if job.state == "queued":
                job.state, job.finished_at = "cancelled", now_text()
                self.metrics.jobs.labels("cancelled").inc()
            elif job.state == "running":
                job.cancel_requested, job.state = True, "cancelling"
                _terminate(job.process)
            return job

    def report_file(self, token: str, name: str) -> tuple[bytes, str]:
        """A file of a job's report (index.html, crops/NNN.png), made anew while the job
        runs when the last one is older than REPORT_REFRESH_SECONDS."""
        presented = token.encode("utf-8", "replace")
        job = next((j for j in list(self.jobs.values()) if secrets.compare_digest(j.token.encode(), presented)), None)
        if job is None or not REPORT_FILE.fullmatch(name):
            raise ApiError(404, "no such report")
        if job.state in ("running", "cancelling") and name == "index.html" \
                and time.monotonic() - job.report_made > REPORT_REFRESH_SECONDS:
            self._make_report(job)
        fs, root = store.open_location(job.dst, self.config.storage_options)
        path = posixpath.join(root, "_report", job.id, name)
        try:
            data = fs.cat_file(path)
        except (FileNotFoundError, OSError):
            raise ApiError(404, "the report is not written yet (no image has finished)") from None
        return data, "text/html; charset=utf-8" if name.endswith(".html") else "image/png"

    def close(self) -> None:
        """Server shutdown: queued jobs are cancelled, running ones stopped as DELETE stops
        them (their rows kept; `upscaler rerun DST` completes them)."""
        with self._lock:
            self._closing = True
            running = [j for j in self.jobs.values() if j.process is not None and j.state not in STATES_DONE]
            for job in self.jobs.values():
                if job.state == "queued":
                    job.state, job.finished_at = "cancelled", now_text()
            for job in running:
                job.cancel_requested, job.state = True, "cancelling"
                _terminate(job.process)
        deadline = time.monotonic() + STOP_SECONDS
        for job in running:
            try:
                job.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()

    # ------------------------------------------------------------------ running

    def _start_next(self) -> None:
        running = sum(j.state in ("running", "cancelling") for j in self.jobs.values())
        for job in sorted(self.jobs.values(), key=lambda j: j.created_at + j.id):
            if running >= self.config.max_jobs or self._closing:
                return
            if job.state == "queued":
                self._launch(job)
                running += 1

    def _launch(self, job: Job) -> None:
        job.state = "running"
        job.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve.run_job"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)  # the terminal's Ctrl-C reaches the server only
        job.process.stdin.write(json.dumps({"argv": job.argv, "storage_options": self.config.storage_options}).encode())
        job.process.stdin.close()
        threading.Thread(target=self._watch, args=(job,), name=f"job-{job.id}", daemon=True).start()

    def _watch(self, job: Job) -> None:
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(job.process.stdout.read()), daemon=True)
        reader.start()
        tail = ""
        for chunk in iter(lambda: os.read(job.process.stderr.fileno(), 65536), b""):
            tail = (tail + chunk.decode("utf-8", "replace"))[-8192:]
            self._progress(job, tail)
        code = job.process.wait()
        reader.join()
        job.stderr_tail = tail
        self._finish(job, code, b"".join(out).decode("utf-8", "replace"), tail)

    def _progress(self, job: Job, tail: str) -> None:
        bars = _BAR.findall(tail)
        if not bars:
            return
        done, total, rest = bars[-1]
        job.total, job.done = int(total), int(done)
        failed = _FAILED.search(rest.strip())
        if failed:
            job.counts["failed"] = int(failed.group(1))
        job.counts["ok"] = job.done - job.counts["failed"]

    def _finish(self, job: Job, code: int, stdout: str, stderr: str) -> None:
        summary = _json_object(stdout)
        if summary is not None:
            job.counts = {"ok": summary.get("ok", 0), "failed": summary.get("failed", 0),
                          "skipped": summary.get("skipped", 0) + summary.get("quarantined", 0)}
            job.done = job.counts["ok"] + job.counts["failed"]
            if job.total is None:
                job.total = job.done
        else:
            self._counts_from_manifest(job)
        if job.cancel_requested and code != 0:
            state, error = "cancelled", None
        elif code == 0:
            state, error = "succeeded", None
        elif code == 3:
            state = "failed"
            error = (f"{job.counts['failed']} of {job.done} images failed; the others are written (see the report; "
                     "`upscaler rerun DST` retries the failed ones)")
        else:
            state, error = "failed", _error_line(stderr, code)
        if job.done:
            self._make_report(job)
        with self._lock:
            job.state, job.error, job.finished_at = state, error, now_text()
            self.metrics.jobs.labels(state).inc()
            job.process.stdout.close()
            job.process.stderr.close()
            self._start_next()

    def _counts_from_manifest(self, job: Job) -> None:
        """ok/failed of the job's run from its rows in the manifest (a stopped run prints no summary)."""
        import pyarrow.dataset as ds

        from pipeline.store import manifest

        try:
            fs, root = store.open_location(job.dst, self.config.storage_options)
            folder = posixpath.join(manifest.manifest_dir(root), f"run_id={job.id}")
            files = [p for p in fs.find(folder) if p.endswith(".parquet")] if fs.exists(folder) else []
            statuses = ds.dataset(files, filesystem=fs, format="parquet").to_table(columns=["status"]) \
                .column("status").to_pylist() if files else []
        except Exception as error:  # the counts are a courtesy: the job's state stands without them
            log.warning("job %s: manifest not readable: %s", job.id, one_line_text(str(error)))
            return
        job.counts["ok"], job.counts["failed"] = statuses.count("ok"), statuses.count("failed")
        job.done = job.counts["ok"] + job.counts["failed"]

    def _make_report(self, job: Job) -> None:
        from pipeline.ops.report import write_report

        job.report_made = time.monotonic()
        try:
            write_report(job.dst, job.id, self.config.storage_options)
            job.report = True
        except FileNotFoundError:
            pass  # no row of this run yet
        except Exception as error:
            log.warning("job %s: report not written: %s", job.id, one_line_text(str(error)))

    def _forget_old(self) -> None:
        done = [j for j in self.jobs.values() if j.state in STATES_DONE]
        for job in sorted(done, key=lambda j: j.created_at)[: max(0, len(self.jobs) - KEEP_JOBS)]:
            del self.jobs[job.id]


def _terminate(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)


def _json_object(text: str) -> dict | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(text[start:])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error_line(stderr: str, code: int) -> str:
    """The run's own error line ("upscaler run: error: ..."), else its exit status."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", stderr) if line.strip()]
    for line in reversed(lines):
        if ": error: " in line:
            return one_line_text(line.split(": error: ", 1)[1])
    return f"the run exited with status {code}" + (f": {one_line_text(lines[-1], 300)}" if lines else "")
