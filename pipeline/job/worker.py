"""The per-process worker both executors use: one loaded model, the stages in order.

    read (stages/read) -> infer (stages/infer) -> write (stages/write) -> score (stages/score)

`--executor local` overlaps reading and writing with inference in threads; a Ray actor
runs `process` on two work units at once, so one is read and written while the other
is inferred. Either way an image's row comes only from here.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

from pipeline import store
from pipeline.inference.engine import Upscaler
from pipeline.models import LoadedModel
from pipeline.job.circuit import Circuit
from pipeline.store.manifest import ManifestRow
from pipeline.job.sink import now
from pipeline.stages import ImageWork
from pipeline.stages.infer import infer
from pipeline.stages.list import PlannedImage
from pipeline.stages.read import read
from pipeline.stages.score import Reference, score
from pipeline.stages.write import local_output_dir, write


def build_upscaler(spec, model: LoadedModel) -> Upscaler:
    return Upscaler(model, device=spec.device, precision=spec.precision, tile=spec.tile, overlap=spec.overlap,
                    compile=spec.compile)


class Worker:
    def __init__(self, spec, model: LoadedModel, *, run_id: str, config_key: str, name: str,
                 upscaler: Upscaler | None = None):
        self.spec = spec
        self.upscaler = upscaler or build_upscaler(spec, model)
        self.dst_fs, self.dst_root = store.open_location(spec.dst, spec.storage_options)
        self.reference = Reference(spec.reference, spec.storage_options) if spec.reference else None
        self.circuit = Circuit(spec.storage_failures)  # this worker's own view of storage
        # One group at a time through a model (its memory, its tile state); a resize has no
        # state, so threads resize their own images at once.
        self._model = nullcontext() if self.upscaler.interpolation else threading.Lock()
        info = self.upscaler.info
        self.template = dict(run_id=run_id, config_key=config_key, model=model.name, model_sha256=model.sha256,
                             scale=float(spec.scale or model.scale), precision=info["precision"],
                             device=info["device"], worker=name)

    def start(self, planned: PlannedImage) -> ImageWork:
        source = planned.source
        row = ManifestRow(**self.template, image_id=source.key, src_uri=source.uri,
                          source_version=source.version, started_at=now())
        return ImageWork(planned, row)

    def read(self, planned: PlannedImage, circuit: Circuit | None = None) -> ImageWork:
        work = self.start(planned)
        circuit = circuit or self.circuit
        if circuit.open:
            work.fail(circuit.refusal(), "read")
            return work
        return read(work, self.spec, lambda key: local_output_dir(self.spec, key))

    def infer(self, group: list[ImageWork]) -> None:
        with self._model:
            infer(group, self.upscaler, self.spec.scale, self.spec.time_limit)

    def finish(self, work: ImageWork) -> ManifestRow:
        write(work, self.spec, self.dst_fs, self.dst_root)
        score(work, self.reference)
        work.row.finished_at = now()
        work.row.seconds_total = time.perf_counter() - work.started
        return work.row

    def process(self, unit: list[PlannedImage]) -> list[ManifestRow]:
        """A work unit in order, `batch_images` at a time, in this thread (the Ray actors'
        way; thread-safe)."""
        rows = []
        for start in range(0, len(unit), self.spec.batch_images):
            group = [self.read(planned) for planned in unit[start:start + self.spec.batch_images]]
            self.infer(group)
            for work in group:
                rows.append(self.finish(work))
                self.circuit.record(rows[-1])
        return rows
