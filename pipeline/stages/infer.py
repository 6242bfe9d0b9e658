"""Infer: tile, run the model, stitch (inference/engine.py), for a group of images at once.

Tiles of several images share forward passes. Whether an image is tiled, and how, is
decided per image (`Upscaler.tiling_for`), so an image's output does not depend on the
images batched with it. If the group fails, each image is retried alone so only the
image at fault fails. A raster's outputs are mapped back to its bands and nodata here.
A volume (NIfTI) goes alone: its slices, all of one shape, share forward passes in
groups sized to VOLUME_GROUP_BYTES, each slice mapped to [0, 1] and back by the volume's
one plan, so memory holds one group's float planes beside the volume and its output.
A multi-frame image's frames go through the engine in groups (`_frames`).
"""

from __future__ import annotations

import time

import numpy as np

from pipeline import formats, raster
from pipeline.stages import ImageWork, stage
from pipeline.stages import stream

VOLUME_GROUP_BYTES = 256 << 20  # float working memory of one group of slices (input, output, restore)


def infer(group: list[ImageWork], upscaler, scale: float | None, time_limit: float | None) -> None:
    """Upscale every live image of `group`; `time_limit` is seconds per image."""
    for work in group:
        if work.alive and work.stream is not None:
            _stream(work, upscaler, scale, time_limit)
        elif work.alive and work.decoded is not None and formats.is_volume(work.decoded):
            _volume(work, upscaler, scale, time_limit)
        elif work.alive and isinstance(work.plan, raster.FramePlan):
            _frames(work, upscaler, scale, time_limit)
    live = [w for w in group if w.alive and w.decoded is not None and not formats.is_volume(w.decoded)
            and not isinstance(w.plan, raster.FramePlan)]
    if not live:
        return
    started = time.perf_counter()
    inputs, spans = [], []
    for work in live:
        ins = work.inputs if work.plan is not None else [work.decoded.pixels]
        spans.append((len(inputs), len(ins)))
        inputs.extend(ins)
    deadline = time.monotonic() + time_limit * len(live) if time_limit else None
    try:
        outputs = upscaler.upscale(inputs, scale, deadline=deadline) if inputs else []
    except Exception as error:
        if len(live) == 1:
            live[0].fail(error, "infer")
            live[0].row.seconds_infer = time.perf_counter() - started
            return
        for work in live:
            infer([work], upscaler, scale, time_limit)
        return
    elapsed = time.perf_counter() - started
    total = sum(w.decoded.pixels.shape[0] * w.decoded.pixels.shape[1] for w in live)
    for work, (start, count) in zip(live, spans):
        h, w = work.decoded.pixels.shape[:2]
        work.row.seconds_infer = elapsed * h * w / total
        _record_tiling(work, upscaler, h, w)
        work.row.precision = upscaler.precision_for(inputs[start].dtype)  # fp32 for images deeper than 8 bits
        if work.plan is None:
            work.output = outputs[start]
            continue
        with stage(work, "nodata restore"):
            work.output = work.plan.restore(outputs[start : start + count], work.decoded.pixels, work.valid,
                                            upscaler.output_size(h, w, scale))
            work.inputs = None


FRAME_GROUP_VALUES = 1 << 24  # output values of a group of frames: 64 MiB of float32 per colour plane


def _frames(work: ImageWork, upscaler, scale: float | None, time_limit: float | None) -> None:
    """A multi-frame image (raster.FramePlan): its frames in groups of equal shape (which share
    the engine's forward passes), each frame filled, restored and scored (lr_psnr, summed over the
    frames) on its own, into one output: the model's float temporaries are one group's, whatever
    the frame count. `time_limit` is per frame."""
    started = time.perf_counter()
    plan, pixels = work.plan, work.decoded.pixels
    one, count = plan.frame, plan.frames
    h, w = pixels.shape[:2]
    deadline = time.monotonic() + time_limit * count if time_limit else None
    with stage(work, "infer"):
        oh, ow = upscaler.output_size(h, w, scale)
        out = np.empty((count, oh, ow, one.bands), plan.dtype)
        score = stream._LrScore(one)
        per_group = max(1, FRAME_GROUP_VALUES // (oh * ow))
        whole = (slice(None), slice(None))
        for first in range(0, count, per_group):
            frames = [plan.pixels_of(pixels, f) for f in range(first, min(count, first + per_group))]
            valid = [one.valid(p) for p in frames]
            inputs = [one.inputs(p, v) for p, v in zip(frames, valid)]
            outputs = upscaler.upscale([x for ins in inputs for x in ins], scale, deadline=deadline)
            at = 0
            for k, (p, v, ins) in enumerate(zip(frames, valid, inputs)):
                out[first + k] = one.restore(outputs[at : at + len(ins)], p, v, (oh, ow))
                at += len(ins)
                score.add(out[first + k], p, v, whole)
            del inputs, outputs
        work.output = np.moveaxis(out, 0, 2).reshape(oh, ow, count * one.bands)  # a view for one band
        work.row.lr_psnr = score.value()
        work.row.precision = upscaler.precision_for("float32")  # frames reach the model as float planes
        _record_tiling(work, upscaler, h, w)
    work.row.seconds_infer = time.perf_counter() - started


def _record_tiling(work: ImageWork, upscaler, height: int, width: int) -> None:
    tile, overlap = upscaler.tiling_for(height, width)
    work.row.tile, work.row.overlap = str(tile), overlap


def _stream(work: ImageWork, upscaler, scale: float | None, time_limit: float | None) -> None:
    started = time.perf_counter()
    deadline = time.monotonic() + time_limit if time_limit else None
    with stage(work, "infer"):
        stream.run(work.stream, upscaler, scale, deadline=deadline)
        work.row.precision = upscaler.precision_for("float32")  # windows reach the model as float planes
        _record_tiling(work, upscaler, *stream.window_shape(work.stream, upscaler, scale))
    work.row.seconds_infer = time.perf_counter() - started


def _volume(work: ImageWork, upscaler, scale: float | None, time_limit: float | None) -> None:
    """Every slice of a volume through the engine, a group at a time; `time_limit` is per
    slice. lr_psnr is summed slice by slice (as a streamed image's is window by window)."""
    started = time.perf_counter()
    stack, plan = work.decoded.pixels, work.plan
    h, w, slices = stack.shape
    out_hw = upscaler.output_size(h, w, scale)
    deadline = time.monotonic() + time_limit * slices if time_limit else None
    with stage(work, "infer"):
        output = np.empty((*out_hw, slices), dtype=stack.dtype)
        lr_score = stream._LrScore(plan)  # the same sum as a streamed image's
        per_slice = 4 * (h * w + 3 * out_hw[0] * out_hw[1])
        group = max(1, min(slices, VOLUME_GROUP_BYTES // per_slice))
        whole = (slice(None), slice(None))
        for first in range(0, slices, group):
            planes = [stack[..., k : k + 1] for k in range(first, min(slices, first + group))]
            valid = [plan.valid(p) for p in planes]
            inputs = [plan.inputs(p, v) for p, v in zip(planes, valid)]  # [] for a slice without valid voxels
            batch = [i[0] for i in inputs if i]
            outputs = iter(upscaler.upscale(batch, scale, deadline=deadline) if batch else [])
            for k, (p, v, i) in enumerate(zip(planes, valid, inputs), start=first):
                restored = plan.restore([next(outputs)] if i else [], p, v, out_hw)
                output[..., k] = restored[..., 0]
                lr_score.add(restored, p, v, whole)
        work.output = output
        work.row.lr_psnr = lr_score.value()
        work.row.precision = upscaler.precision_for("float32")  # slices reach the model as float planes
        _record_tiling(work, upscaler, h, w)
    work.row.seconds_infer = time.perf_counter() - started
