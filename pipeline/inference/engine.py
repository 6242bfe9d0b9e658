"""The inference engine: arrays in, upscaled arrays out, on CPU or CUDA.

Plain Python and PyTorch; no storage, no Ray. One `Upscaler` holds a loaded
model on a device and upscales lists of images, batching equal-shaped tiles
from all of them into one forward pass.

How an output scale that differs from the model's is reached:
- interpolation models (bicubic, lanczos) resize straight to the target size;
- otherwise the model runs k times, the smallest k with scale**k >= target
  (x8 from an x4 model is two passes), and when that overshoots, the result is
  downscaled to the target with the antialiased MATLAB-compatible bicubic
  (x3 or x2.5 from an x4 model is one x4 pass, then a downscale). Output size
  is round(input size * target scale).

Pixel values: uint8, uint16 and int16 map to [0, 1] by their full range; float
images already in [0, 1] pass as they are, others are mapped by their min and
max and mapped back afterwards. Gray images run through an RGB model as three
equal channels and come back as one (the channel mean); alpha is resized
separately with bicubic and re-attached, never hallucinated by the model.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.models import LoadedModel
from pipeline.inference.resize import resize_torch
from pipeline.inference.tiling import Stitcher, Tile, plan_tiles

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_TILE = 32
CPU_BATCH_PIXELS = 16384


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_precision(precision: str, device: torch.device, model: LoadedModel) -> str:
    """fp32 on CPU; on CUDA bf16 where the card and model support it, else fp16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if device.type != "cuda" or model.module is None:
        return "fp32"
    if model.supports_bf16 and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp16" if model.supports_half else "fp32"


def memory_budget(device: torch.device) -> int:
    """Bytes the engine may use for activations: a share of what is free."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.6)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 8 << 30
    return int(min(4 << 30, available // 4))


def _model_width(module: torch.nn.Module) -> int:
    widths = [p.shape[0] for p in module.parameters() if p.dim() == 4]
    return max(widths, default=3)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class ImageTimeLimitError(RuntimeError):
    """An image (or group) took longer than its per-image time limit."""


@dataclass
class EngineStats:
    tiles: int = 0
    batches: int = 0
    fp32_fallback_tiles: int = 0
    oom_retries: int = 0
    seconds_forward: float = 0.0
    history: list = field(default_factory=list)


class Upscaler:
    """A model on a device, ready to upscale numpy images of any supported layout."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str = "auto",
        precision: str = "auto",
        tile: int | None = None,
        overlap: int | None = None,
        batch_size: int | None = None,
        memory_budget_bytes: int | None = None,
    ):
        self.model = model
        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device, model)
        self.dtype = _DTYPES[self.precision]
        self.overlap = model.overlap if overlap is None else overlap
        self.requested_tile = tile
        self.batch_size = batch_size
        self.budget = memory_budget_bytes or memory_budget(self.device)
        self.stats = EngineStats()
        self.deadline: float | None = None  # time.monotonic() value; set per call by the runner
        self.interpolation = model.arch in ("bicubic", "lanczos")
        module = model.module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self._fp32_module = None
        # channels_last suits cuDNN and oneDNN alike (EDSR on this CPU: 17% faster).
        module = module.to(self.device, memory_format=torch.channels_last)
        self.module = module.to(self.device, dtype=self.dtype)
        width = _model_width(model.module)
        # Activation bytes per input pixel: a few feature maps alive at once,
        # the widest at the upsampled resolution.
        self.bytes_per_pixel = 4 * 3 * width * max(1, model.scale**2) if not self.interpolation else 64

    # ------------------------------------------------------------------ public

    @property
    def info(self) -> dict:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "tile": self.requested_tile if self.requested_tile is not None else "auto",
            "overlap": self.overlap,
        }

    def output_size(self, height: int, width: int, scale: float | None) -> tuple[int, int]:
        s = self.model.scale if scale is None else scale
        return max(1, round(height * s)), max(1, round(width * s))

    def upscale(self, images: list[np.ndarray], scale: float | None = None) -> list[np.ndarray]:
        """Upscale HxWxC images (uint8, uint16, int16 or float32; C = 1..4), keeping dtype and C.
        Rasters with other band counts go through raster.BandPlan, which hands this
        float32 planes in [0, 1]."""
        target = float(self.model.scale if scale is None else scale)
        if target <= 0:
            raise ValueError(f"scale must be positive, not {target}")
        prepared = [_to_unit(img) for img in images]
        colors = [p.color for p in prepared]
        if self.interpolation:  # a gray image's three equal planes: resize one, the same bits
            upscaled = [self._interpolate(c[:1], target).expand(3, -1, -1) if p.gray else self._interpolate(c, target)
                        for p, c in zip(prepared, colors)]
        else:
            upscaled = self._model_passes(colors, target)
        results = []
        for p, color in zip(prepared, upscaled):
            out_hw = tuple(color.shape[-2:])
            alpha = None
            if p.alpha is not None:
                alpha = resize_torch(p.alpha[None].double(), out_hw, kernel="cubic").float()[0]
            results.append(p.restore(color, alpha))
        return results

    # ---------------------------------------------------------------- internals

    def _interpolate(self, color: torch.Tensor, target: float) -> torch.Tensor:
        h, w = color.shape[-2:]
        kernel = "cubic" if self.model.arch == "bicubic" else "lanczos3"
        return resize_torch(color[None].double(), self.output_size(h, w, target), kernel=kernel).float()[0]

    def _model_passes(self, colors: list[torch.Tensor], target: float) -> list[torch.Tensor]:
        s = self.model.scale
        passes = max(1, math.ceil(math.log(target, s) - 1e-9)) if target > 1 else 1
        sizes = [self.output_size(*c.shape[-2:], target) for c in colors]
        current = colors
        for _ in range(passes):
            if self.model.in_channels == 1:  # a single-channel model sees each plane as an image
                planes = self._one_pass([plane[None] for c in current for plane in c])
                current = [torch.cat(planes[i : i + 3]) for i in range(0, len(planes), 3)]
            else:
                current = self._one_pass(current)
        return [
            c if tuple(c.shape[-2:]) == size else resize_torch(c[None], size, kernel="cubic")[0]
            for c, size in zip(current, sizes)
        ]

    def auto_tile(self) -> int:
        """Largest tile whose activations fit the memory budget at batch size 1."""
        side = int(math.sqrt(self.budget / self.bytes_per_pixel))
        m = max(1, self.model.size_multiple)
        return max(MIN_TILE, side // m * m)

    def _one_pass(self, colors: list[torch.Tensor]) -> list[torch.Tensor]:
        """One model pass over several images, retried with halved tiles on OOM."""
        tile = self.requested_tile
        if tile is None:
            tile = self.auto_tile()
            if all(c.shape[-2] * c.shape[-1] <= tile * tile for c in colors):
                tile = 0  # every image fits whole
        while True:
            try:
                return self._tiled_pass(colors, tile)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                biggest = max(max(c.shape[-2:]) for c in colors)
                smaller = (tile or biggest) // 2
                if smaller < max(MIN_TILE, 2 * self.overlap + 1):
                    raise
                self.stats.oom_retries += 1
                self.stats.history.append(f"out of memory at tile {tile or 'whole'}; retrying at {smaller}")
                tile = smaller
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _tiled_pass(self, colors: list[torch.Tensor], tile: int) -> list[torch.Tensor]:
        s = self.model.scale
        overlap = min(self.overlap, tile // 2) if tile else 0
        work: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
        stitchers = []
        for index, color in enumerate(colors):
            c, h, w = color.shape
            stitchers.append(Stitcher(c, h, w, s, overlap, self._stitch_device(c * h * w * s * s)))
            for t in plan_tiles(h, w, tile, overlap):
                work.setdefault(t.shape, []).append((index, t))
        batches_done = 0
        for shape, items in work.items():
            per_batch = self._batch_size(shape)
            for start in range(0, len(items), per_batch):
                chunk = items[start : start + per_batch]
                batch = torch.stack([colors[i][:, t.y0 : t.y1, t.x0 : t.x1] for i, t in chunk])
                if batches_done and self.deadline is not None and time.monotonic() > self.deadline:
                    raise ImageTimeLimitError("over the per-image time limit (--time-limit); checked between tiles")
                out = self._forward(batch)
                batches_done += 1
                for (i, t), upscaled in zip(chunk, out):
                    stitchers[i].add(t, upscaled)
        return [st.result() for st in stitchers]

    def _stitch_device(self, output_values: int) -> torch.device:
        """Where an image's output is assembled: on the GPU when its accumulators
        (output + weights, float32) take under a tenth of the memory budget, so the
        tiles never cross PCIe in float32; else in host memory."""
        if self.device.type == "cuda" and output_values * 4 * 4 // 3 < self.budget // 10:
            return self.device
        return torch.device("cpu")

    def _batch_size(self, shape: tuple[int, int]) -> int:
        """As many tiles as the memory budget allows on a GPU. On a CPU, batching
        large tiles is slower (EDSR x4, 4 x 192x128: 3.1 s batched, 1.9 s one by
        one), so only small tiles are batched, up to 16K pixels a batch."""
        if self.batch_size:
            return self.batch_size
        pixels = shape[0] * shape[1]
        limit = self.budget // max(1, self.bytes_per_pixel * pixels)
        if self.device.type != "cuda":
            limit = min(limit, CPU_BATCH_PIXELS // max(1, pixels))
        return int(max(1, min(16, limit)))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Model forward on a batch of tiles (N, C, h, w) float32 -> float32 on the
        engine's device (the stitcher moves it where the image is assembled)."""
        h, w = batch.shape[-2:]
        batch, crop = self._pad_to_requirements(batch)
        started = time.perf_counter()
        out = self._run(self.module, batch, self.dtype).float()
        if self.dtype != torch.float32:
            bad = ~torch.isfinite(out).flatten(1).all(dim=1)
            if bad.any():
                self.stats.fp32_fallback_tiles += int(bad.sum())
                out[bad] = self._run(self._module_fp32(), batch[bad], torch.float32)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.seconds_forward += time.perf_counter() - started
        self.stats.tiles += len(batch)
        self.stats.batches += 1
        s = self.model.scale
        return out[..., : h * s, : w * s] if crop else out

    def _run(self, module: torch.nn.Module, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.device.type == "cuda" and batch.device.type == "cpu":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = batch.to(dtype=dtype, memory_format=torch.channels_last)
        with torch.inference_mode():
            return module(batch)

    def _module_fp32(self) -> torch.nn.Module:
        if self._fp32_module is None:
            self._fp32_module = copy.deepcopy(self.module).to(dtype=torch.float32)
        return self._fp32_module

    def _pad_to_requirements(self, batch: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Reflect-pad bottom/right to the model's size multiple, minimum and squareness."""
        m = max(1, self.model.size_multiple)
        h, w = batch.shape[-2:]
        ph = max(math.ceil(h / m) * m, self.model.min_size)
        pw = max(math.ceil(w / m) * m, self.model.min_size)
        if self.model.square:
            ph = pw = max(ph, pw)
        if (ph, pw) == (h, w):
            return batch, False
        mode = "reflect" if ph - h < h and pw - w < w else "replicate"
        return torch.nn.functional.pad(batch, (0, pw - w, 0, ph - h), mode=mode), True


@dataclass
class _Prepared:
    """An image as model input, plus what is needed to map the output back."""

    color: torch.Tensor  # (1 or 3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None  # (1, H, W)
    dtype: np.dtype
    channels: int
    gray: bool
    value_range: tuple[float, float] | None  # float images mapped by min/max

    def restore(self, color: torch.Tensor, alpha: torch.Tensor | None) -> np.ndarray:
        """Back to the input's dtype and layout, quantised where `color` is (on a
        GPU, only the final integer image crosses to the host)."""
        if self.gray and color.shape[0] == 3:
            color = color.mean(dim=0, keepdim=True)
        planes = color if alpha is None else torch.cat([color, alpha.to(color.device)], dim=0)
        planes = planes.permute(1, 2, 0)
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            unit = planes.clamp(0.0, 1.0) * float(info.max - info.min)
            if info.min:  # int16: 0 maps to -32768
                unit = unit + float(info.min)
            wide = torch.uint8 if self.dtype == np.uint8 else torch.int32  # torch has no full uint16
            array = unit.round().to(wide).cpu().numpy().astype(self.dtype, copy=False)
        else:
            if self.value_range is not None:
                lo, hi = self.value_range
                planes = planes * (hi - lo) + lo
            array = planes.cpu().numpy().astype(self.dtype, copy=False)
        return np.ascontiguousarray(array)  # encoders such as libpng need C order


def _to_unit(pixels: np.ndarray) -> _Prepared:
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an H x W x C image with 1 to 4 channels, got shape {pixels.shape}")
    channels = pixels.shape[2]
    value_range = None
    if pixels.dtype in (np.uint8, np.uint16):
        unit = pixels.astype(np.float32) / float(np.iinfo(pixels.dtype).max)
    elif pixels.dtype == np.int16:  # the type's full range, -32768..32767 -> 0..1
        unit = (pixels.astype(np.float32) + 32768.0) / 65535.0
    elif np.issubdtype(pixels.dtype, np.floating):
        unit = pixels.astype(np.float32)
        finite = unit[np.isfinite(unit)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:
            value_range = (lo, hi if hi > lo else lo + 1.0)
            unit = (unit - lo) / (value_range[1] - lo)
        unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    else:
        raise ValueError(f"unsupported pixel type {pixels.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))
    gray = channels in (1, 2)
    color = tensor[:1] if gray else tensor[:3]
    alpha = tensor[channels - 1 :] if channels in (2, 4) else None
    if gray:
        color = color.expand(3, -1, -1).contiguous()
    return _Prepared(color, alpha, pixels.dtype, channels, gray, value_range)
