"""One upload's journey, through the batch job's own stages, so a served image comes
back exactly as `upscaler run` writes it (bit depth, alpha, EXIF/ICC, GeoTIFF tags):

    decode (stages.read.decode) -> infer (stages.infer.infer, in the batcher, with
    other requests) -> encode (stages.write.encode) -> lr_psnr (stages.score.score)

The upload stays in memory from first byte to last: no temporary file, no path.
A failure is the image's row, as in a run; `error_for` turns it into the HTTP status.
"""

from __future__ import annotations

import re

from pipeline.spec import RunSpec
from pipeline.stages import ImageWork
from pipeline.stages.list import PlannedImage
from pipeline.stages.read import decode
from pipeline.stages.score import score
from pipeline.stages.write import encode
from pipeline.store import Source
from pipeline.store.manifest import ManifestRow
from pipeline.serve.errors import ApiError

# A row's error type -> status; other failures are 422 before inference (the input),
# 500 after it (ours).
STATUS_BY_ERROR = {"ImageTooLargeError": 413, "ImageTimeLimitError": 504, "MemoryError": 503,
                   "OutOfMemoryError": 503, "ImageDecodeError": 422, "OutputFormatError": 422,
                   "ImageEncodeError": 422}
INPUT_STAGES = ("decode", "read", "band plan", "nodata fill")

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "tiff": "image/tiff",
                 "bmp": "image/bmp", "dicom": "application/dicom"}


def safe_stem(filename: str | None) -> str:
    """The name the client gave, reduced to a harmless stem for Content-Disposition and
    messages ("../../x y.PNG" -> "x_y"); "image" when nothing is left."""
    name = re.split(r"[\\/]", filename or "")[-1]
    stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:100]
    return stem or "image"


def start(data: bytes, label: str, spec: RunSpec, model) -> ImageWork:
    """Decode an upload (refused from its header when over spec.max_pixels) into an
    ImageWork whose row carries the model, as a run's worker starts one."""
    source = Source(uri=label, key=label, size=len(data), version="")
    row = ManifestRow(image_id=label, src_uri=label, model=model.name, model_sha256=model.sha256,
                      scale=float(spec.scale or model.scale))
    work = ImageWork(PlannedImage(source, output_key=""), row)
    decode(work, data, spec)
    return work


def finish(work: ImageWork, spec: RunSpec) -> tuple[bytes, str]:
    """(bytes, format) of an upscaled image, then its lr_psnr; the pixels are released."""
    try:
        data, fmt, _ext = encode(work, spec)
    except Exception as error:  # as the write stage records it: one line, naming the stage
        work.fail(error, "encode")
        raise error_for(work.row) from None
    work.row.update(dict(out_format=fmt, out_height=work.output.shape[0], out_width=work.output.shape[1]))
    score(work)
    if not work.alive:
        raise error_for(work.row)
    return data, fmt


def error_for(row: ManifestRow) -> ApiError:
    status = STATUS_BY_ERROR.get(row.error_type or "")
    if status is None:
        status = 422 if (row.error or "").split(":", 1)[0] in INPUT_STAGES else 500
    return ApiError(status, row.error or "failed")
