"""`create_app(config) -> FastAPI`: the HTTP API of `upscaler serve` (and of its Ray
Serve deployment), the web page's files and the job reports.

The event loop only parses, checks and awaits: decoding and encoding run in a small
thread pool, the model in the batcher's inference threads (batching.py), so a slow
image never stalls other requests, health checks or /metrics. Every refusal is
`{"error": "<one line>"}` with its status (errors.ApiError).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline import __version__
from pipeline.errors import one_line_text
from pipeline.serve import docs, single
from pipeline.serve.batching import Batcher
from pipeline.serve.config import MAX_SCALE, SCALES, ServeConfig
from pipeline.serve.errors import ApiError
from pipeline.serve.jobs import JobManager
from pipeline.serve.keys import KeyStore
from pipeline.serve.limits import Admission, ConcurrencyLimiter, RateLimiter, read_body
from pipeline.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from pipeline.serve.presets import Presets, public_name
from pipeline.serve.upload import image_bytes
from pipeline.spec import RunSpec

STATIC = Path(__file__).resolve().parent / "static"
JOB_BODY_LIMIT = 64 << 10
OUTPUT_FORMATS = {"png": "png", "tiff": "tiff", "tif": "tiff", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
ALWAYS_ANSWERED = ("/healthz", "/metrics")  # still answered while draining

log = logging.getLogger("pipeline.serve")


@dataclass(frozen=True)
class Identity:
    name: str
    permissions: tuple
    auth: bool
    rate_per_minute: float | None = None
    concurrency: int | None = None


class Service:
    """Everything the routes share: settings, keys, limits, the batcher, the jobs."""

    def __init__(self, config: ServeConfig, presets: Presets | None = None):
        from pipeline.serve.batching import Batcher
        from pipeline.serve.jobs import JobManager
        from pipeline.serve.keys import KeyStore
        config.check()
        self.config = config
        self.presets = presets or Presets(config.models)
        self.metrics = Metrics()
        self.metrics.queue_capacity.set(config.queue_size)
        self.keys = None if config.no_auth else KeyStore(config.keys_file)
        self.rate, self.concurrency = RateLimiter(), ConcurrencyLimiter()
        self.admission = Admission(config.queue_size, config.workers)
        self.default_spec = self.request_spec(None, None, None, None, None)
        self.batcher = Batcher(self.presets, workers=config.workers, max_batch=config.max_batch,
                               wait_ms=config.batch_wait_ms, time_limit=config.time_limit,
                               default_spec=self.default_spec, metrics=self.metrics, admission=self.admission)
        self.jobs = JobManager(config, self.presets, self.metrics)
        self.io = concurrent.futures.ThreadPoolExecutor(config.io_threads, thread_name_prefix="serve-io")
        self.draining = False
        self.in_flight = 0

    # ------------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.batcher.start()
        try:
            yield
        finally:
            self.draining = True
            await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        self.jobs.close()
        self.batcher.stop()
        self.io.shutdown(wait=False, cancel_futures=True)

    def begin_drain(self) -> None:
        """SIGTERM: new requests get 503 from now on; those in flight finish."""
        self.draining = True
        log.warning("draining: %d request(s) in flight finish, new ones get 503", self.in_flight)

    # ------------------------------------------------------------------ keys and limits

    def authenticate(self, header: str | None, permission: str) -> Identity:
        if self.keys is None:
            return Identity("anonymous", ("upscale", "jobs"), auth=False)
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "an API key is needed: send Authorization: Bearer <key>",
                           headers={"WWW-Authenticate": "Bearer"})
        key = self.keys.verify(token.strip())
        if key is None:
            raise ApiError(401, "the API key is not valid (unknown or revoked)", headers={"WWW-Authenticate": "Bearer"})
        if not key.allows(permission):
            raise ApiError(403, f"key {key.name!r} may not use {permission} (its permissions: "
                                f"{', '.join(key.permissions)})")
        return Identity(key.name, tuple(key.permissions), True, key.rate_per_minute, key.concurrency)

    # ------------------------------------------------------------------ upscale

    def request_spec(self, scale, model, fmt, tile, quality):
        """The RunSpec of a request, from its query parameters (422 for a bad one): the
        same settings object a run uses, so the stages treat the image as a run would."""
        scale_value = _number(scale, "scale")
        if scale_value is not None and not 1 <= scale_value <= MAX_SCALE:
            raise ApiError(422, f"scale must be from 1 to {MAX_SCALE:g}, not {scale}")
        tile_value = _integer(tile, "tile")
        if tile_value is not None and not (tile_value == 0 or 16 <= tile_value <= 4096):
            raise ApiError(422, f"tile must be 0 (whole image) or from 16 to 4096 pixels, not {tile}")
        quality_value = _integer(quality, "quality")
        if quality_value is not None and not 1 <= quality_value <= 100:
            raise ApiError(422, f"quality must be from 1 to 100, not {quality}")
        if fmt is not None and fmt.lower() not in OUTPUT_FORMATS:
            raise ApiError(422, f"format {fmt!r} is not an output format; choose png, tiff, jpeg or webp")
        spec = self.presets.spec_for(model, scale_value)
        return RunSpec(model=spec, scale=scale_value, tile=tile_value,
                              format=OUTPUT_FORMATS[fmt.lower()] if fmt else None, quality=quality_value or 95,
                              precision=self.config.precision, device=self.config.device,
                              max_pixels=self.config.max_pixels, stream_threshold=0)

    def decode(self, data: bytes, label: str, spec):
        """In the I/O pool: the model (for its scale), the pixel limit at that scale, the decode."""
        model = self.presets.load(spec.model, spec.model_scale_hint())
        scale = spec.scale or model.scale
        limit = min(self.config.max_pixels, int(self.config.max_output_pixels / (scale * scale)))
        spec = dataclasses.replace(spec, max_pixels=max(1, limit))
        return single.start(data, label, spec, model), spec

    async def upscale(self, request: Request, who: Identity, spec, filename: str | None) -> Response:
        received = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.rate.take(who.name, who.rate_per_minute)
        with self.concurrency.hold(who.name, who.concurrency):
            self.admission.enter()
            self.metrics.queue_depth.inc()
            try:
                body = await read_body(request, self.config.max_upload_bytes)
                data, form_name = image_bytes(body, request.headers.get("content-type"))
                del body
                stem = single.safe_stem(filename or form_name)
                with self.batcher.expecting() as slot:
                    work, spec = await loop.run_in_executor(self.io, self.decode, data, stem, spec)
                    del data
                    if not work.alive:
                        raise single.error_for(work.row)
                    item = slot.submit(work, spec)
                work = await asyncio.wrap_future(item.future)
                if not work.alive:
                    raise single.error_for(work.row)
                out_h, out_w = work.output.shape[:2]
                output, fmt = await loop.run_in_executor(self.io, single.finish, work, spec)
            finally:
                self.admission.leave()
                self.metrics.queue_depth.dec()
        row = work.row
        self.metrics.images.inc()
        ext = {"jpeg": "jpg", "tiff": "tif", "dicom": "dcm"}.get(fmt, fmt)
        headers = {
            "X-Upscaler-Model": row.model or "", "X-Upscaler-Model-Sha256": row.model_sha256 or "none",
            "X-Upscaler-Scale": f"{row.scale:g}", "X-Upscaler-Width": str(out_w), "X-Upscaler-Height": str(out_h),
            "X-Upscaler-LR-PSNR": _float_text(row.lr_psnr), "X-Upscaler-Seconds-Infer": f"{row.seconds_infer or 0:.4f}",
            "X-Upscaler-Seconds-Total": f"{time.perf_counter() - received:.4f}",
            "X-Upscaler-Queue-Seconds": f"{(item.started or item.submitted) - item.submitted:.4f}",
            "Content-Disposition": f'attachment; filename="{stem}_x{row.scale:g}.{ext}"',
        }
        return Response(output, media_type=single.CONTENT_TYPES.get(fmt, "application/octet-stream"), headers=headers)


def _number(text: str | None, name: str) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ApiError(422, f"{name} must be a number, not {text[:40]!r}") from None
    if not math.isfinite(value):
        raise ApiError(422, f"{name} must be a finite number, not {text[:40]!r}")
    return value


def _integer(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ApiError(422, f"{name} must be a whole number, not {text[:40]!r}") from None


def _float_text(value: float | None) -> str:
    return "nan" if value is None else ("inf" if value == math.inf else f"{value:.4f}")


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line_text(message)}, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: 503 while draining, in-flight count, metrics by route and status,
    and headers every response gets."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service, path = self.service, scope["path"]
        if service.draining and path not in ALWAYS_ANSWERED:
            response = error_response(503, "the server is shutting down", {"Retry-After": "5"})
            service.metrics.requests.labels("draining", "503").inc()
            return await response(scope, receive, send)
        started, status = time.perf_counter(), [500]
        service.in_flight += 1
        service.metrics.in_flight.inc()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if path.startswith("/v1/"):
                    message["headers"].append((b"cache-control", b"no-store"))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            service.in_flight -= 1
            service.metrics.in_flight.dec()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            service.metrics.requests.labels(label, str(status[0])).inc()
            service.metrics.latency.labels(label).observe(time.perf_counter() - started)
            if label == "/v1/upscale" and status[0] >= 400:
                service.metrics.failures.labels(str(status[0])).inc()


def create_app(config: ServeConfig, *, presets: Presets | None = None) -> FastAPI:
    """The app; `presets` lets the CLI hand over the models it already loaded (and checked)."""
    service = Service(config, presets)
    app = FastAPI(title="upscaler", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=service.lifespan,
                  description="Super-resolution over HTTP: upload an image, get it back upscaled, with the batch "
                              "job's fidelity; start and follow batch jobs.")
    app.state.service = service
    if config.cors_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[config.cors_origin], allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=["Content-Disposition", "X-Upscaler-Model", "X-Upscaler-Model-Sha256",
                                           "X-Upscaler-Scale", "X-Upscaler-Width", "X-Upscaler-Height",
                                           "X-Upscaler-LR-PSNR", "X-Upscaler-Seconds-Infer",
                                           "X-Upscaler-Seconds-Total", "X-Upscaler-Queue-Seconds", "Retry-After"])
    app.add_middleware(Guard, service=service)

    @app.exception_handler(ApiError)
    async def api_error(request, error: ApiError):
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def bug(request, error: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}); the server's log has the details")

    def permission(name: str):
        async def dependency(request: Request) -> Identity:
            return service.authenticate(request.headers.get("authorization"), name)
        return dependency

    # ------------------------------------------------------------------ public

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC / "index.html"
        if not page.is_file():
            raise ApiError(404, "the web page is not installed (pipeline/serve/static/index.html)")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/docs", include_in_schema=False)
    async def api_docs():
        return HTMLResponse(docs.PAGE)

    @app.get("/healthz", summary="the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="the default model is loaded and the server takes requests (else 503)")
    async def readyz():
        model = public_name(service.default_spec.model)
        if service.batcher.load_error:
            return JSONResponse({"status": "broken", "model": model, "error": service.batcher.load_error},
                                status_code=503)
        if not service.batcher.ready:
            return JSONResponse({"status": "loading", "model": model, "error": "the model is loading"},
                                status_code=503)
        return {"status": "ready", "model": model}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/reports/{token}/{name:path}", summary="a job's report (capability URL: the token is the key)")
    async def report(token: str, name: str):
        data, kind = await asyncio.get_running_loop().run_in_executor(
            service.io, service.jobs.report_file, token, name)
        return Response(data, media_type=kind, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------ /v1

    @app.get("/v1/whoami", summary="the key's name and permissions")
    async def whoami(who: Identity = Depends(permission("upscale"))):
        return {"name": who.name, "permissions": list(who.permissions), "auth": who.auth}

    @app.get("/v1/models", summary="the model presets, scales and limits")
    async def models(who: Identity = Depends(permission("upscale"))):
        return {"models": service.presets.describe(), "scales": list(SCALES), "default": "photo",
                "max_upload_bytes": config.max_upload_bytes, "max_pixels": config.max_pixels,
                "max_output_pixels": config.max_output_pixels, "jobs": config.jobs_enabled}

    @app.post("/v1/upscale", summary="upscale one image (the body: its bytes, or multipart field 'image')",
              responses={200: {"content": {"image/png": {}}, "description": "the upscaled image"},
                         413: {"description": "body or pixels over the limit"},
                         422: {"description": "not an image, bad parameter, unknown model"},
                         429: {"description": "queue full or key over its limits (Retry-After)"},
                         503: {"description": "shutting down"}, 504: {"description": "time limit"}})
    async def upscale(request: Request,
                      scale: str | None = Query(None, description="output scale, 1 to 8 (default: the model's)"),
                      model: str | None = Query(None, description="a preset from /v1/models (default: photo)"),
                      format: str | None = Query(None, description="png, tiff, jpeg or webp (default: the input's)"),
                      tile: str | None = Query(None, description="tile side in input pixels; 0 = whole (default: auto)"),
                      quality: str | None = Query(None, description="JPEG/WebP quality (default: 95)"),
                      filename: str | None = Query(None, description="the output's name comes from its stem"),
                      who: Identity = Depends(permission("upscale"))):
        spec = service.request_spec(scale, model, format, tile, quality)
        return await service.upscale(request, who, spec, filename)

    @app.post("/v1/jobs", status_code=201, summary="start a batch job: {src, dst, options}")
    async def create_job(request: Request, who: Identity = Depends(permission("jobs"))):
        service.rate.take(who.name, who.rate_per_minute)
        body = await read_body(request, JOB_BODY_LIMIT)
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        job = await asyncio.get_running_loop().run_in_executor(service.io, service.jobs.create, payload)
        return JSONResponse(job.public(), status_code=201)

    @app.get("/v1/jobs", summary="the jobs, newest first")
    async def list_jobs(who: Identity = Depends(permission("jobs"))):
        return {"jobs": [job.public() for job in service.jobs.list()]}

    @app.get("/v1/jobs/{job_id}", summary="one job: state, counts, progress, report")
    async def get_job(job_id: str, who: Identity = Depends(permission("jobs"))):
        return service.jobs.get(job_id).public()

    @app.delete("/v1/jobs/{job_id}", status_code=202, summary="cancel a job (finished images keep their rows)")
    async def cancel_job(job_id: str, who: Identity = Depends(permission("jobs"))):
        return JSONResponse(service.jobs.cancel(job_id).public(), status_code=202)

    return app
