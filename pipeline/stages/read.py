"""Read: bytes through fsspec, decoded to pixels at the source's bit depth.

Rasters (GeoTIFF, JPEG 2000, multi-band, int16, DICOM) also get their band plan and model
inputs here, in the reader thread; a NIfTI volume its band plan only (its slices are mapped
in groups during inference, so the whole volume is never held as float planes). A TIFF or
JPEG 2000 file over the stream threshold has only its header read: the streaming strategy
(stages/stream.py) then reads it window by window during inference and writes it tile by
tile.
"""

from __future__ import annotations

import posixpath
import time

import numpy as np

from pipeline import formats, raster, store
from pipeline.stages import ImageWork, stage
from pipeline.stages import stream
from pipeline.formats import safe


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
        if work.stream is None and safe.is_safe(work.source.key):
            data, note = read_safe(work.source.uri, spec.storage_options, spec.max_pixels)
            decode(work, data, spec)
            row.update(dict(src_format="safe"))
            row.note(note)
        elif work.stream is None:
            data = store.read_bytes(work.source.uri, spec.storage_options)
            decode(work, data, spec)
    row.seconds_read = time.perf_counter() - work.started
    return work


def read_safe(uri: str, storage_options: dict | None, max_pixels: int | None) -> tuple[bytes, str]:
    """A Sentinel-2 `.SAFE` folder or `.SAFE.zip` as GeoTIFF bytes (formats/safe.py): only
    its metadata and four 10 m band files are read (from a zip, by ranged reads)."""
    fs, root, names = safe_files(uri, storage_options)
    return safe.to_geotiff(names, lambda name: store.with_retries(
        lambda: fs.cat_file(posixpath.join(root, name) if root else name), f"reading {uri}/{name}"),
        uri, max_pixels)


def safe_files(uri: str, storage_options: dict | None) -> tuple[object, str, list[str]]:
    """(filesystem, root, file names relative to root) of a `.SAFE` folder, or of the zip's
    own filesystem for a `.SAFE.zip`."""
    fs, root = store.open_location(uri, storage_options)
    if root.lower().endswith(".zip"):
        import zipfile

        import fsspec.implementations.zip as fszip

        try:
            fs, root = fszip.ZipFileSystem(fs.open(root, "rb")), ""
        except zipfile.BadZipFile as exc:
            raise formats.ImageDecodeError(f"{uri}: not a readable zip ({exc})") from exc
    names = [posixpath.relpath(path, root) if root else path
             for path in store.with_retries(lambda: fs.find(root), f"listing {uri}")]
    return fs, root, names


def decode(work: ImageWork, data: bytes, spec) -> None:
    """`data` decoded into `work` (refused from the header when over spec.max_pixels), the
    output format checked, and a raster's band plan and model inputs made: what `read`
    does once it has the bytes (the HTTP service, pipeline/serve, calls it on an upload)."""
    with stage(work, "decode"):
        decoded = formats.decode_image(data, name=work.source.uri, max_pixels=spec.max_pixels,
                                       nifti_plane=spec.nifti_plane)
        h, w, c = decoded.pixels.shape
        c //= decoded.raster.frames if decoded.raster is not None else 1  # a multi-frame image: per frame
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
    if formats.is_volume(decoded):  # one range for the volume; its slices are mapped group by group in infer
        with stage(work, "band plan"):
            work.plan = formats.nifti.plan(decoded, spec.radiometric)
        return
    with stage(work, "band plan"):
        work.plan = raster.plan_for(decoded.pixels, decoded.raster, band_mode=spec.band_mode,
                                    radiometric=spec.radiometric)
    if work.alive and isinstance(work.plan, raster.BandPlan):  # a FramePlan's frames: in the infer stage
        with stage(work, "nodata fill"):
            work.valid = work.plan.valid(decoded.pixels)
            work.inputs = work.plan.inputs(decoded.pixels, work.valid)
