"""One image's journey, a module per stage: list, read, infer, write, score.

Each stage takes the `ImageWork` of an image (or a group of them, for inference) and
moves it on; any exception raised for an image inside a stage becomes that image's
failed row (`stage`), naming the stage, and the image's later stages are skipped.
Nothing a stage raises for one image reaches the others.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.store.manifest import ManifestRow
from pipeline.stages.list import PlannedImage


@dataclass
class ImageWork:
    """One image in flight: where it comes from and goes, its row, and its pixels between stages."""

    planned: PlannedImage
    row: ManifestRow
    started: float = field(default_factory=time.perf_counter)
    decoded: object | None = None  # formats.DecodedImage
    plan: object | None = None  # raster.BandPlan: how a raster's bands reach the model
    inputs: list | None = None  # rasters: the model inputs (float32 in [0, 1])
    valid: np.ndarray | None = None  # rasters with nodata: H x W validity mask
    output: np.ndarray | None = None
    stream: object | None = None  # stages.stream.StreamJob: a large TIFF, window by window

    @property
    def source(self):
        return self.planned.source

    @property
    def alive(self) -> bool:
        return self.row.status != "failed"

    def fail(self, error: BaseException, stage: str) -> None:
        self.row.fail(error, stage)
        self.release()

    def release(self) -> None:
        """Drop the pixels (and a streamed image's temporary file)."""
        self.decoded = self.output = self.inputs = self.valid = None
        if self.stream is not None:
            self.stream.cleanup()
            self.stream = None


@contextlib.contextmanager
def stage(work: ImageWork, name: str):
    """Run a step of `work`; an exception becomes its failed row instead of propagating."""
    try:
        yield
    except Exception as error:  # one bad image must not stop the run
        work.fail(error, name)
