"""Read: bytes through fsspec, decoded to pixels at the source's bit depth.

Rasters (GeoTIFF, JPEG 2000, multi-band, int16, DICOM) also get their band plan and model
inputs here, in the reader thread. A TIFF or JPEG 2000 file over the stream threshold has
only its header read:
the streaming strategy (stages/stream.py) then reads it window by window during
inference and writes it tile by tile.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline import formats, raster, store
from pipeline.stages import ImageWork, stage
from pipeline.stages import stream


class OutputCollisionError(ValueError):
    """Another source of this run, or an earlier run's output of another image, has the same output key."""


def read(work: ImageWork, spec, local_dir) -> ImageWork:
    """Decode `work`'s source (or probe it for streaming). `local_dir(key)` is where a
    streamed output is written first."""
    row = work.row
    if work.planned.refused:
        work.fail(OutputCollisionError(work.planned.refused), "list")
        return work
    with stage(work, "read"):
        store.safe_key(work.source.key)
        if spec.stream_threshold and stream.may_stream(work.source.key):
            job = stream.probe(work.source.uri, spec.storage_options, threshold=spec.stream_threshold,
                               name=work.source.uri)
            if job is not None:
                if formats.output_format(job.like.format, spec.format)[0] != "tiff":
                    h, w, _ = job.shape
                    raise formats.OutputFormatError(f"{w} x {h} pixels stream into a tiled TIFF; --format "
                                                    f"{spec.format} is not possible for it")
                job.band_mode, job.radiometric, job.compress_level = spec.band_mode, spec.radiometric, \
                    spec.compress_level
                job.output = (spec.raster_format, spec.raster_compress, spec.raster_blocksize)
                job.local_dir = local_dir(work.planned.output_key)
                work.stream = job
                row.update(job.row_fields())
        if work.stream is None:
            data = store.read_bytes(work.source.uri, spec.storage_options)
            decode(work, data, spec)
    row.seconds_read = time.perf_counter() - work.started
    return work


def decode(work: ImageWork, data: bytes, spec) -> None:
    """`data` decoded into `work` (refused from the header when over spec.max_pixels), the
    output format checked, and a raster's band plan and model inputs made: what `read`
    does once it has the bytes (the HTTP service, pipeline/serve, calls it on an upload)."""
    with stage(work, "decode"):
        decoded = formats.decode_image(data, name=work.source.uri, max_pixels=spec.max_pixels)
        h, w, c = decoded.pixels.shape
        work.row.update(dict(width=w, height=h, channels=c, dtype=str(decoded.pixels.dtype),
                             src_format=decoded.format, src_mode=decoded.mode))
        for note in decoded.info.get("notes", ()):
            work.row.note(note)
        work.decoded = decoded
    if work.alive:
        with stage(work, "read"):  # a format that cannot hold the image: said before any model time
            formats.check_output(decoded, spec.format)
    if not work.alive or (decoded.raster is None and decoded.dtype != np.uint16):
        return  # 8-bit and float photos: the engine's own mapping; 16-bit ones by their range (raster.py)
    with stage(work, "band plan"):
        work.plan = raster.plan_for(decoded.pixels, decoded.raster, band_mode=spec.band_mode,
                                    radiometric=spec.radiometric)
    if work.alive:
        with stage(work, "nodata fill"):
            work.valid = work.plan.valid(decoded.pixels)
            work.inputs = work.plan.inputs(decoded.pixels, work.valid)
