"""uvicorn, with the SIGTERM a container orchestrator sends before it kills a pod:
new requests get 503 at once (the load balancer moves on), requests in flight finish
(up to `drain_seconds`), then the server stops and the process exits 0.

uvicorn's own handling closes the socket first (new clients see a refused connection,
not a 503) and re-raises the signal after shutdown, so the process ends by SIGTERM
rather than with status 0; the first SIGTERM is handled here instead. A second signal
(or Ctrl-C) is uvicorn's as usual.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time

import uvicorn


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and not self.service.draining:
            self.service.begin_drain()
            threading.Thread(target=self._stop_when_idle, name="drain", daemon=True).start()
            return
        super().handle_exit(sig, frame)

    def _stop_when_idle(self) -> None:
        deadline = time.monotonic() + self.service.config.drain_seconds
        while self.service.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.should_exit = True


class HideReportTokens(logging.Filter):
    """A report's URL is its capability (pipeline/serve/jobs.py): the access log shows
    `/reports/<token>/...` instead of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            args = list(record.args)
            args[2] = re.sub(r"^/reports/[^/?]+", "/reports/<token>", args[2])
            record.args = tuple(args)
        return True


def serve(app) -> None:
    """Run `app` (create_app's) on its config's host and port until SIGTERM or Ctrl-C."""
    service = app.state.service
    config = uvicorn.Config(app, host=service.config.host, port=service.config.port, lifespan="on",
                            timeout_graceful_shutdown=service.config.drain_seconds, server_header=False,
                            log_level="info")
    logging.getLogger("uvicorn.access").addFilter(HideReportTokens())
    DrainingServer(config, service).run()
