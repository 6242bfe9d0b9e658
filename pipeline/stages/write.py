"""Write: encode in the input's format (or --format) and put it under DST atomically.

The output key is the one planned at listing (stages/list.py), where outputs were
checked against each other. A file whose content is another format than its name says
(a PNG named .jpg) gets the extension of its content; that key was not part of the
check, so it is written only when nothing is there yet.
"""

from __future__ import annotations

import os
import posixpath
import time

from pipeline import __version__, formats, store
from pipeline.stages import ImageWork, stac, stage
from pipeline.stages.read import OutputCollisionError


def write(work: ImageWork, spec, dst_fs, dst_root: str) -> ImageWork:
    started = time.perf_counter()
    if work.alive and work.stream is not None:
        _write_stream(work, spec, dst_fs, dst_root)
    elif work.alive and work.output is not None:
        decoded, out, row = work.decoded, work.output, work.row
        data = None
        with stage(work, "encode"):
            data, fmt, ext = encode(work, spec)
        if data is not None:
            with stage(work, "write"):
                path = _output_path(work, spec, dst_fs, dst_root, ext)
                store.write_atomic(dst_fs, path, data)
                row.update(dict(status="ok", dst_uri=store.full_uri(dst_fs, path), out_format=fmt,
                                out_height=out.shape[0], out_width=out.shape[1]))
                row.update(raster_columns(decoded, work.plan, out.shape, row.config_key))
                _write_item(work, spec, dst_fs, dst_root, path, data)
    work.row.seconds_write = time.perf_counter() - started
    return work


def encode(work: ImageWork, spec) -> tuple[bytes, str, str]:
    """(bytes, format, extension) of `work`'s output as the job writes it: the input's
    format or spec.format, its metadata carried (the HTTP service, pipeline/serve, calls
    it too). Raises on what cannot be encoded; `write` turns that into the row's failure."""
    decoded, out, row = work.decoded, work.output, work.row
    fmt, ext = formats.output_format(decoded.format, spec.format)
    derivation = None
    if decoded.format == "dicom":
        derivation = {"description": _derivation_text(row, out, decoded), "uid_seed": row.config_key,
                      "syntax": spec.dicom_syntax}
    elif formats.is_volume(decoded):  # descrip holds 80 bytes: the factor and the model's name
        model = posixpath.basename(str(row.model or "").rstrip("/"))
        derivation = {"description": f"upscaler x{out.shape[1] / decoded.shape[1]:g} in-plane, {model}"}
    data = formats.encode_image(out, decoded, fmt, quality=spec.quality, dpi_scale=out.shape[1] / decoded.shape[1],
                                compress_level=spec.compress_level, derivation=derivation,
                                raster_format=spec.raster_format, raster_compress=spec.raster_compress,
                                raster_blocksize=spec.raster_blocksize)
    return data, fmt, ext


def _output_path(work: ImageWork, spec, dst_fs, dst_root: str, ext: str) -> str:
    key = store.output_key(work.source.key, ext, keep_extension=spec.keep_extension)
    path = posixpath.join(dst_root, key)
    if key != work.planned.output_key and dst_fs.exists(path):
        raise OutputCollisionError(f"the file's content is {ext.lstrip('.').upper()}, unlike its name: its "
                                   f"output {key} already exists and is not replaced; use --format")
    return path


def _write_stream(work: ImageWork, spec, dst_fs, dst_root: str) -> None:
    job, row = work.stream, work.row
    with stage(work, "write"):
        fmt, ext = formats.output_format(job.like.format, spec.format)
        if fmt != "tiff":
            raise formats.ImageEncodeError(f"{work.source.uri} is {job.shape[1]} x {job.shape[0]} pixels and is "
                                           f"streamed into a tiled TIFF; --format {fmt} is not possible for it")
        path = _output_path(work, spec, dst_fs, dst_root, ext)
        _move_into_place(dst_fs, path, job)
        out_h, out_w, _ = job.out_shape
        row.update(dict(status="ok", dst_uri=store.full_uri(dst_fs, path), out_format="tiff",
                        out_height=out_h, out_width=out_w, stream_windows=job.windows, lr_psnr=job.lr_psnr))
        row.update(raster_columns(job.like, job.plan if job.like.raster is not None else None, job.out_shape, ""))
        _write_item(work, spec, dst_fs, dst_root, path, job.tmp_path or path)
    work.release()


def _write_item(work: ImageWork, spec, dst_fs, dst_root: str, path: str, written) -> None:
    """The STAC Item of a georeferenced output (stages/stac.py), once the output is in place;
    `written` is its content (bytes, or a local file). An Item that cannot be written fails the row."""
    if work.alive and work.row.crs and work.row.transform_out:
        with stage(work, "stac item"):
            work.row.stac_item_uri = stac.write_item(work.row, spec, dst_fs, dst_root, path, written)


def _move_into_place(dst_fs, path: str, job) -> None:
    """The streamed file under its final name, appearing only when complete: a rename
    on a local destination, one upload (a PUT or multipart upload) otherwise."""
    if store.is_local(dst_fs) and job.local_dir is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(job.tmp_path, path)
        job.tmp_path = None
        return
    store.with_retries(lambda: dst_fs.put_file(job.tmp_path, path), f"writing {path}")


def local_output_dir(spec, key: str) -> str | None:
    """Where a streamed output is written first: the destination folder when the
    destination is local (so a rename finishes it), else the temporary directory."""
    fs, root = store.open_location(spec.dst, spec.storage_options)
    if not store.is_local(fs) or not key:
        return None
    folder = posixpath.dirname(posixpath.join(root, key))
    os.makedirs(folder, exist_ok=True)
    return folder


def _derivation_text(row, out, decoded) -> str:
    factor = out.shape[1] / decoded.shape[1]
    return (f"Super-resolution x{factor:g} by upscaler {__version__}, model {row.model} "
            f"(sha256 {str(row.model_sha256 or 'none')[:16]}); in-plane pixel spacing divided by {factor:g}")


def raster_columns(decoded, plan, out_shape: tuple, uid_seed: str) -> dict:
    """Manifest columns of a raster (null for photos): CRS, geotransforms, nodata, bands,
    radiometric scaling; for DICOM the UIDs and spacings (and nothing about the patient); for
    NIfTI the shapes and plane (bands), affines (transform_*) and zooms (pixel_spacing_*)."""
    info = decoded.raster
    if info is None:
        return {}
    from pipeline import raster

    columns = {"nodata": raster.nodata_text(info.nodata)}
    if plan is not None:
        columns.update(bands=plan.bands_json(), radiometric=plan.radiometric_json())
    if info.geo is not None:
        in_h, in_w = decoded.shape[:2]
        out_h, out_w = out_shape[:2]
        columns.update(crs=info.geo.crs(), transform_in=info.geo.transform_json(),
                       transform_out=info.geo.scaled(out_w / in_w, out_h / in_h).transform_json())
    if decoded.format == "dicom":
        from pipeline.formats import dicom

        columns.update(dicom.describe(decoded, out_shape, uid_seed))
    if formats.is_volume(decoded):
        columns.update(formats.nifti.describe(decoded, out_shape))
    return columns
