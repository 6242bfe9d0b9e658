"""What keeps one client, or too many at once, from taking the server down: per-key rate
and concurrency, the admission queue, and the body limit (checked from Content-Length
and again while the body streams in).

Everything here is refused with a status and, for a wait that will end, a Retry-After.
"""

from __future__ import annotations

import math
import threading
import time

from pipeline.serve.errors import ApiError


class RateLimiter:
    """A token bucket per key: `rate` per minute, bursts up to `rate`."""

    def __init__(self):
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, name: str, rate_per_minute: float | None) -> None:
        if not rate_per_minute:
            return
        now = time.monotonic()
        per_second = rate_per_minute / 60.0
        with self._lock:
            tokens, at = self._buckets.get(name, (rate_per_minute, now))
            tokens = min(rate_per_minute, tokens + (now - at) * per_second)
            if tokens < 1:
                self._buckets[name] = (tokens, now)
                wait = math.ceil((1 - tokens) / per_second)
                raise ApiError(429, f"key {name!r} is over its rate of {rate_per_minute:g} requests per minute",
                               retry_after=wait)
            self._buckets[name] = (tokens - 1, now)


class ConcurrencyLimiter:
    """Requests of a key being worked on at once; `hold` is a context manager."""

    def __init__(self):
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def hold(self, name: str, limit: int | None):
        return _Held(self, name, limit)


class _Held:
    def __init__(self, owner: ConcurrencyLimiter, name: str, limit: int | None):
        self.owner, self.name, self.limit = owner, name, limit

    def __enter__(self):
        with self.owner._lock:
            active = self.owner._active.get(self.name, 0)
            if self.limit and active >= self.limit:
                raise ApiError(429, f"key {self.name!r} already has {active} requests in progress "
                                    f"(its limit is {self.limit})", retry_after=1)
            self.owner._active[self.name] = active + 1
        return self

    def __exit__(self, *exc):
        with self.owner._lock:
            self.owner._active[self.name] -= 1


class Admission:
    """At most `capacity` upscale requests in the server at once (from the body's first
    byte to the response), so memory and waiting time stay bounded under any load; the
    next one gets 429 with a Retry-After estimated from the recent time per image."""

    def __init__(self, capacity: int, workers: int):
        self.capacity, self.workers = capacity, workers
        self.admitted = 0
        self.seconds_per_image = 0.5  # updated by the batcher (an exponential average)
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.admitted >= self.capacity:
                wait = max(1, math.ceil(self.admitted * self.seconds_per_image / self.workers))
                raise ApiError(429, f"the server's queue is full ({self.capacity} requests); try again later",
                               retry_after=wait)
            self.admitted += 1

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1

    def observe(self, seconds: float, images: int) -> None:
        with self._lock:
            self.seconds_per_image = 0.8 * self.seconds_per_image + 0.2 * seconds / max(1, images)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to be over `limit` bytes:
    from Content-Length before reading, else while streaming (chunked uploads)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, f"Content-Length {declared[:40]!r} is not a number") from None
        if size > limit:
            raise ApiError(413, f"the body is {size:,} bytes, over this server's limit of {limit:,}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"the body is over this server's limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
