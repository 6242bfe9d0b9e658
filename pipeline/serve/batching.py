"""Dynamic batching: inference threads own the Upscalers; requests of one shape, model,
scale and tile that arrive within `batch_wait_ms` share one `stages.infer.infer` call
(one `Upscaler.upscale`), up to `max_batch` images.

The event loop never runs the model: handlers submit decoded images here and await a
future. A batch waits for company only while other requests are still being decoded
(`expecting`), so a lone request is not delayed. An image's result does not depend on
its companions: the engine decides tiling per image, and a CPU runs every tile in a
forward pass of its own (inference/engine.py), so batched bytes equal unbatched ones.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

from pipeline.job.worker import build_upscaler
from pipeline.spec import RunSpec
from pipeline.stages import ImageWork
from pipeline.stages.infer import infer
from pipeline.serve.errors import ApiError
from pipeline.serve.presets import Presets, is_interpolation

ENGINES_PER_THREAD = 8  # Upscalers a thread keeps (model x tile), least recently used dropped

log = logging.getLogger(__name__)


@dataclass
class Item:
    work: ImageWork
    spec: RunSpec
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when its batch went to the model

    @property
    def key(self) -> tuple:
        return (*engine_key(self.spec), self.spec.scale, self.work.decoded.pixels.shape, self.work.plan is not None)


def engine_key(spec: RunSpec) -> tuple:
    return spec.model, spec.model_scale_hint() if is_interpolation(spec.model) else None, spec.tile


class Batcher:
    def __init__(self, presets: Presets, *, workers: int, max_batch: int, wait_ms: float, time_limit: float | None,
                 default_spec: RunSpec, metrics, admission):
        self.presets, self.max_batch, self.wait = presets, max_batch, wait_ms / 1000
        self.time_limit, self.default_spec = time_limit, default_spec
        self.metrics, self.admission = metrics, admission
        self._pending: collections.deque[Item] = collections.deque()
        self._expected = 0  # admitted requests still decoding: they may join a batch
        self._cond = threading.Condition()
        self._stopping = False
        self._ready = 0
        self.load_error: str | None = None
        self._threads = [threading.Thread(target=self._run, name=f"infer-{i}", daemon=True) for i in range(workers)]

    # ------------------------------------------------------------------ the handlers' side

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def ready(self) -> bool:
        return self._ready == len(self._threads)

    @contextlib.contextmanager
    def expecting(self):
        """Around a request's decode: batches wait for it; `submit` hands it over."""
        slot = _Slot(self)
        with self._cond:
            self._expected += 1
        try:
            yield slot
        finally:
            if not slot.done:
                with self._cond:
                    self._expected -= 1
                    self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # ------------------------------------------------------------------ the inference threads

    def _next_batch(self) -> list[Item] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None
            first = self._pending.popleft()
            batch, key, until = [first], first.key, time.monotonic() + self.wait
            while len(batch) < self.max_batch:
                for item in [i for i in self._pending if i.key == key][: self.max_batch - len(batch)]:
                    self._pending.remove(item)
                    batch.append(item)
                remaining = until - time.monotonic()
                if len(batch) >= self.max_batch or not self._expected or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self.metrics.waiting.set(len(self._pending))
            return batch

    def _run(self) -> None:
        engines: collections.OrderedDict = collections.OrderedDict()
        try:
            self._engine(engines, self.default_spec)
        except Exception as error:  # the CLI loaded it already; a Ray replica says so in /readyz
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("cannot load the default model: %s", self.load_error)
        with self._cond:
            self._ready += 1
        while (batch := self._next_batch()) is not None:
            self._infer(engines, batch)

    def _engine(self, engines: collections.OrderedDict, spec: RunSpec):
        key = engine_key(spec)
        upscaler = engines.pop(key, None)
        if upscaler is None:
            upscaler = build_upscaler(spec, self.presets.load(spec.model, spec.model_scale_hint()))
        engines[key] = upscaler
        while len(engines) > ENGINES_PER_THREAD:
            engines.popitem(last=False)
        return upscaler

    def _infer(self, engines, batch: list[Item]) -> None:
        started = time.perf_counter()
        works = [item.work for item in batch]
        for item in batch:
            item.started = started
        try:
            upscaler = self._engine(engines, batch[0].spec)
            for work in works:  # what a run's worker records (infer adds each image's precision), the DICOM seed
                work.row.device = upscaler.info["device"]
                work.row.config_key = batch[0].spec.config_key(upscaler.model, upscaler.info)
            infer(works, upscaler, batch[0].spec.scale, self.time_limit)
        except Exception as error:  # infer keeps an image's failure in its row; this is the engine itself
            for work in works:
                if work.alive:
                    work.fail(error, "infer")
        elapsed = time.perf_counter() - started
        self.metrics.batches.inc()
        self.metrics.batch_images.inc(len(batch))
        self.metrics.infer_seconds.observe(elapsed)
        self.admission.observe(elapsed, len(batch))
        for item in batch:
            item.future.set_result(item.work)


class _Slot:
    def __init__(self, batcher: Batcher):
        self.batcher, self.done = batcher, False

    def submit(self, work: ImageWork, spec: RunSpec) -> Item:
        item = Item(work, spec)
        b = self.batcher
        with b._cond:
            if b._stopping:
                raise ApiError(503, "the server is shutting down")
            b._expected -= 1
            self.done = True
            b._pending.append(item)
            b.metrics.waiting.set(len(b._pending))
            b._cond.notify_all()
        return item
