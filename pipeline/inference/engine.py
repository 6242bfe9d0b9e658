"""The inference engine: arrays in, upscaled arrays out, on CPU or CUDA.

Plain Python and PyTorch; no storage, no Ray. One `Upscaler` holds a private
copy of a loaded model on a device and upscales lists of images.

How an output scale that differs from the model's is reached (`model_passes`):
- interpolation models (bicubic, lanczos) resize straight to the target size,
  in bands of output rows (bounded memory, the time limit checked between bands);
- a scale-1 model (restoration: denoise, deblur, ...) runs once, then the
  MATLAB-compatible bicubic resizes its output to the target, up or down;
- otherwise the model runs k times, the smallest k with scale**k >= target
  (x8 from an x4 model is two passes), and when that overshoots, the result is
  downscaled to the target with the antialiased MATLAB-compatible bicubic
  (x3 or x2.5 from an x4 model is one x4 pass, then a downscale).
Output size is round(input size * target scale).

An image's output bytes depend on the image and the engine's settings only:
whole image or tiles is decided per image (`tiling_for`), the automatic tile is
a fixed function of the model and the device kind (never of free memory), and
on a CPU every tile runs in a forward pass of its own (oneDNN picks other
kernels for batches of 1 and of more: ESPCN on 24 px tiles, 2.5e-7 apart).

The per-image time limit is a `deadline` (a time.monotonic() value) given to
`upscale`; it is checked before and after every forward pass, between model
passes and between the bands of every resize.

Pixel values: uint8, uint16 and int16 map to [0, 1] by their full range; float
images already in [0, 1] pass as they are, others are mapped by their min and
max and mapped back afterwards. Gray images run through an RGB model as three
equal channels and come back as one (the channel mean); alpha is resized
separately with bicubic and re-attached, never hallucinated by the model.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from pipeline.models import LoadedModel
from pipeline.inference import calibration
from pipeline.inference.resize import ResizePlan, resize_torch
from pipeline.inference.tiling import Stitcher, Tile, plan_tiles

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
INTERPOLATIONS = ("bicubic", "lanczos")  # architectures that resize, with no network to run
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MIN_TILE = 32
CPU_MEMORY_BUDGET = 2 << 30  # bytes of activations on a CPU, whatever the host has free
CUDA_MEMORY_SHARE = 0.5  # of the card's total memory
MAX_BATCH = 16


def pick_device(device: str = "auto") -> torch.device:
    """The one place a device name becomes a device. "auto": the first CUDA
    GPU if there is one, else the CPU. A CUDA device that is not there fails
    here, with its name, not at the first forward pass."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return chosen


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), as PyTorch's own
    probe of the CPU's features says. Elsewhere bf16 is emulated, slower than fp32."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def pick_precision(precision: str, device: torch.device, model: LoadedModel) -> str:
    """`auto`: bf16 where the hardware computes in it natively and the model supports it
    (a CUDA card with bf16, a CPU with AVX512-BF16 or AMX), else fp16 on CUDA, fp32 on CPU.
    Tiles that come out non-finite in a half precision are redone in fp32 (`_forward`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision != "auto":
        return precision
    if model.module is None or model.arch in INTERPOLATIONS:
        return "fp32"  # nothing runs in the model's precision (interpolation computes in float64)
    if device.type != "cuda":
        return "bf16" if model.supports_bf16 and cpu_has_native_bf16() else "fp32"
    if model.supports_bf16 and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp16" if model.supports_half else "fp32"


def memory_budget(device: torch.device) -> int:
    """Bytes the engine may use for activations. Fixed per device kind (a
    constant on CPU, a share of the card's total memory on CUDA), never what is
    free right now: the tile decides the output bytes, so it must not vary
    between two engines built seconds apart."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * CUDA_MEMORY_SHARE)
    return CPU_MEMORY_BUDGET


def model_passes(model_scale: int, target: float) -> int:
    """How many times a x`model_scale` model runs to reach an output scale
    `target`: the smallest k with model_scale**k >= target, at least one. A
    scale-1 model runs once; the bicubic resize to the target does the rest."""
    if model_scale < 1 or target <= 0:
        raise ValueError(f"need a model scale >= 1 and a positive target, not {model_scale} and {target}")
    passes = 1
    if model_scale > 1:
        while model_scale**passes < target * (1 - 1e-9):
            passes += 1
    return passes


def _model_width(module: torch.nn.Module) -> int:
    widths = [p.shape[0] for p in module.parameters() if p.dim() == 4]
    return max(widths, default=3)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class ImageTimeLimitError(RuntimeError):
    """An image (or group) took longer than its per-image time limit."""


def _check(deadline: float | None, where: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ImageTimeLimitError(f"over the per-image time limit (--time-limit); checked {where}")


@dataclass
class EngineStats:
    tiles: int = 0
    batches: int = 0
    fp32_fallback_tiles: int = 0
    oom_retries: int = 0
    seconds_forward: float = 0.0
    history: list = field(default_factory=list)


class Upscaler:
    """A model on a device, ready to upscale numpy images of any supported layout.

    The model is copied: the caller's LoadedModel keeps its module, dtype and
    device, so engines of different precisions can share one LoadedModel.
    `tile`: None chooses one per image (`tiling_for`), 0 runs images whole, a
    number is a tile side in input pixels; it must hold twice the overlap.
    `batch_size` caps tiles per forward pass on CUDA; a CPU runs them one by one.
    """

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
        compile: bool = False,
    ):
        self.model = model
        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device, model)
        self.dtype = _DTYPES[self.precision]
        # bf16 and fp16 keep 8 and 11 significant bits: enough for 8-bit images (EDSR x4, bf16:
        # 0.0038 at most, under one level), not for 16-bit or float ones, which `auto` runs in fp32.
        self.deep_precision = "fp32" if precision == "auto" else self.precision
        self.interpolation = model.arch in INTERPOLATIONS
        self.overlap = model.overlap if overlap is None else int(overlap)
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, not {self.overlap}")
        self.requested_tile = None if tile is None else int(tile)
        self.batch_size = batch_size
        self.budget = memory_budget_bytes or memory_budget(self.device)
        self.stats = EngineStats()
        self._oom_tile: int | None = None  # lowered by an out-of-memory retry, for this engine from then on
        self.compile = bool(compile) and not self.interpolation
        self.module = self._private_module(self.dtype)
        self._fp32_module = self.module if self.dtype == torch.float32 else None
        self._compiled = compiled(self.module, self.device) if self.compile else None
        # Activation bytes per input pixel: a few feature maps alive at once,
        # the widest at the upsampled resolution.
        width = _model_width(self.module)
        self.bytes_per_pixel = 4 * 3 * width * max(1, model.scale**2) if not self.interpolation else 64
        m = max(1, model.size_multiple)
        # The smallest tile an automatic choice or an out-of-memory retry may use.
        self.min_tile = _round_up(max(MIN_TILE, 2 * self.overlap, model.min_size), m)
        if self.requested_tile is not None and not self.interpolation:
            self._check_tile(self.requested_tile)
        # What `upscaler calibrate` measured fastest here, if it did (inference/calibration.py).
        self.tuned_tile, self.tuned_batch = (None, None) if self.interpolation else calibration.tuned(
            calibration.model_id(model), calibration.device_name(self.device), self.precision)

    def _check_tile(self, tile: int) -> None:
        if tile < 0:
            raise ValueError(f"tile must be >= 0 (0: whole images), not {tile}")
        if tile and tile < 2 * self.overlap:
            raise ValueError(
                f"tile {tile} cannot hold the overlap {self.overlap}: a tile must be at least twice the "
                f"overlap ({2 * self.overlap} pixels); pass tile >= {2 * self.overlap}, a smaller overlap, "
                f"or no tile to have one chosen")
        if tile and tile < self.model.min_size:
            raise ValueError(
                f"tile {tile} is smaller than the {self.model.min_size} pixels model {self.model.name} needs; "
                f"pass tile >= {self.model.min_size}, or no tile to have one chosen")

    # ------------------------------------------------------------------ public

    @property
    def info(self) -> dict:
        return {
            "device": str(self.device),
            "precision": self.precision,
            "precision_above_8_bits": self.deep_precision,
            "tile": "auto" if self.requested_tile is None else self.requested_tile,
            "overlap": self.overlap,
            **({"compile": True} if self.compile else {}),
            **({"calibrated_tile": self.tuned_tile} if self.tuned_tile and self.requested_tile is None else {}),
        }

    def precision_for(self, dtype) -> str:
        """The precision an image of this dtype runs in: the engine's, or fp32 for images
        deeper than 8 bits (and float planes) when the precision was chosen automatically."""
        return self.precision if np.dtype(dtype) == np.uint8 else self.deep_precision

    def output_size(self, height: int, width: int, scale: float | None) -> tuple[int, int]:
        s = self.model.scale if scale is None else scale
        return max(1, round(height * s)), max(1, round(width * s))

    def memory_tile(self) -> int:
        """Largest tile whose activations fit the memory budget at batch size 1,
        grown where needed to hold the overlap and the model's minimum."""
        side = math.isqrt(int(self.budget // self.bytes_per_pixel))
        m = max(1, self.model.size_multiple)
        return max(self.min_tile, side // m * m)

    def auto_tile(self) -> int:
        """The tile `calibrate` measured fastest on this kind of device, where it did,
        never above what memory allows; else the largest that fits."""
        limit = self.memory_tile()
        return max(self.min_tile, min(self.tuned_tile, limit)) if self.tuned_tile else limit

    def tiling_for(self, height: int, width: int) -> tuple[int, int]:
        """(tile, overlap) that a model pass over an input of this size runs
        with; (0, 0) when it runs whole. It depends on the size and this
        engine's settings only, never on the other images of a call; an
        out-of-memory retry lowers the tile for this engine from then on, so
        ask after `upscale` to record what was used. Automatic tiling runs an
        image whole while its area fits the tile's."""
        if self.interpolation:
            return 0, 0
        tile = self.requested_tile
        if tile is None:
            tile = self.auto_tile() if self._oom_tile is None else min(self.auto_tile(), self._oom_tile)
            return (0, 0) if height * width <= tile * tile else (tile, self.overlap)
        if self._oom_tile is not None:
            tile = min(tile, self._oom_tile) if tile else self._oom_tile
        if tile == 0 or (height <= tile and width <= tile):
            return 0, 0
        return tile, self.overlap

    def upscale(self, images: list[np.ndarray], scale: float | None = None, *,
                deadline: float | None = None) -> list[np.ndarray]:
        """Upscale HxWxC images (uint8, uint16, int16 or float32; C = 1..4), keeping dtype and C.
        `deadline` (time.monotonic()) raises ImageTimeLimitError once passed.
        Rasters with other band counts go through raster.BandPlan, which hands this
        float32 planes in [0, 1]."""
        target = float(self.model.scale if scale is None else scale)
        if target <= 0:
            raise ValueError(f"scale must be positive, not {target}")
        prepared = [_to_unit(img) for img in images]
        if self.interpolation:
            results: list[np.ndarray | None] = [None] * len(prepared)
            for same in _same_layout(prepared):
                for i, out in zip(same, self._interpolate([prepared[i] for i in same], target, deadline)):
                    results[i] = out
            return results
        upscaled: list[torch.Tensor | None] = [None] * len(prepared)
        for precision in dict.fromkeys(self.precision_for(img.dtype) for img in images):
            indices = [i for i, img in enumerate(images) if self.precision_for(img.dtype) == precision]
            colors = [prepared[i].color(self._input_device(prepared[i])) for i in indices]
            for i, out in zip(indices, self._model_passes(colors, target, deadline, _DTYPES[precision])):
                upscaled[i] = out
        check = None if deadline is None else partial(_check, deadline, "between bands of the alpha resize")
        results = []
        for p, color in zip(prepared, upscaled):
            alpha = None
            if p.has_alpha:
                out_hw = tuple(color.shape[-2:])
                alpha = resize_torch(p.alpha()[None].double(), out_hw, kernel="cubic", check=check).float()[0]
            results.append(p.restore(color, alpha))
        return results

    # ---------------------------------------------------------------- internals

    def _interpolate(self, group: list[_Prepared], target: float, deadline: float | None) -> list[np.ndarray]:
        """Resize images of one layout (_same_layout) band by band, from their own pixels into
        the output arrays: no whole-image float copy (an 8000 x 8000 RGB x2 would need 6 GiB
        of float64 output), and the deadline checked between bands. The group shares each
        band's passes: on small images a pass costs its dispatch more than its arithmetic."""
        p = group[0]
        out_hw = self.output_size(p.height, p.width, target)
        kernel = "cubic" if self.model.arch == "bicubic" else "lanczos3"
        color_plan = ResizePlan((p.height, p.width), out_hw, kernel)
        alpha_plan = ResizePlan((p.height, p.width), out_hw, "cubic") if p.has_alpha else None
        planes = (1 if p.gray else 3) + p.has_alpha  # a gray image's three equal planes: resize one
        outs = [np.empty((*out_hw, p.channels), dtype=p.dtype) for _ in group]
        for r0, r1 in color_plan.bands(planes * len(group)):
            _check(deadline, "between bands of the resize")
            lo, hi = color_plan.input_rows(r0, r1)
            if alpha_plan is not None:
                a_lo, a_hi = alpha_plan.input_rows(r0, r1)
                lo, hi = min(lo, a_lo), max(hi, a_hi)
            unit = torch.stack([q.unit(lo, hi) for q in group])
            color = unit[:, :1] if p.gray else unit[:, :3]
            color = color_plan.rows(color.double(), r0, r1, lo).float()
            alpha = None
            if alpha_plan is not None:
                alpha = alpha_plan.rows(unit[:, -1:].double(), r0, r1, lo).float()
            for k, (q, out) in enumerate(zip(group, outs)):
                out[r0:r1] = q.restore(color[k], None if alpha is None else alpha[k])
        return outs

    def _model_passes(self, colors: list[torch.Tensor], target: float, deadline: float | None,
                      dtype: torch.dtype) -> list[torch.Tensor]:
        sizes = [self.output_size(*c.shape[-2:], target) for c in colors]
        current = colors
        for k in range(model_passes(self.model.scale, target)):
            if k:
                _check(deadline, "between model passes")
            if self.model.in_channels == 1:  # a single-channel model sees each plane as an image
                planes = self._one_pass([plane[None] for c in current for plane in c], deadline, dtype)
                current = [torch.cat(planes[i : i + 3]) for i in range(0, len(planes), 3)]
            else:
                current = self._one_pass(current, deadline, dtype)
        check = None if deadline is None else partial(_check, deadline, "between bands of the resize to the target")
        return [
            c if tuple(c.shape[-2:]) == size else resize_torch(c[None], size, kernel="cubic", check=check)[0]
            for c, size in zip(current, sizes)
        ]

    def _one_pass(self, colors: list[torch.Tensor], deadline: float | None, dtype: torch.dtype) -> list[torch.Tensor]:
        """One model pass over several images, each with its own tiling; on
        out of memory, retried with the tile halved, never below `min_tile`."""
        while True:
            tilings = [self.tiling_for(*c.shape[-2:]) for c in colors]
            try:
                return self._tiled_pass(colors, tilings, deadline, dtype)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
                if not is_out_of_memory(error):
                    raise
                # The side of the largest piece run: a whole image counts as the square of its area.
                side = max(t or math.isqrt(c.shape[-2] * c.shape[-1] - 1) + 1 for c, (t, _) in zip(colors, tilings))
                m = max(1, self.model.size_multiple)
                smaller = max(self.min_tile, side // 2 // m * m)
                if smaller >= side:
                    raise RuntimeError(
                        f"out of memory at tile {side}, and a smaller tile could not hold the overlap "
                        f"{self.overlap} (smallest tile {self.min_tile}): {error}") from error
                self.stats.oom_retries += 1
                self.stats.history.append(f"out of memory at tile {side}; retrying at {smaller}")
                self._oom_tile = smaller
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _tiled_pass(self, colors: list[torch.Tensor], tilings: list[tuple[int, int]],
                    deadline: float | None, dtype: torch.dtype) -> list[torch.Tensor]:
        s = self.model.scale
        work: dict[tuple[int, int], list[tuple[int, Tile]]] = {}
        stitchers = []
        for index, (color, (tile, overlap)) in enumerate(zip(colors, tilings)):
            c, h, w = color.shape
            stitchers.append(Stitcher(c, h, w, s, overlap, self._stitch_device(c * h * w * s * s)))
            for t in plan_tiles(h, w, tile, overlap):
                work.setdefault(t.shape, []).append((index, t))
        for shape, items in work.items():
            per_batch = self._batch_size(shape)
            for start in range(0, len(items), per_batch):
                chunk = items[start : start + per_batch]
                batch = torch.stack([colors[i][:, t.y0 : t.y1, t.x0 : t.x1] for i, t in chunk])
                _check(deadline, "before a forward pass")
                out = self._forward(batch, dtype)
                _check(deadline, "after a forward pass")
                for (i, t), upscaled in zip(chunk, out):
                    stitchers[i].add(t, upscaled)
        return [st.result() for st in stitchers]

    def _input_device(self, p: "_Prepared") -> torch.device | None:
        """The GPU for an image whose float32 input takes under a tenth of the memory budget
        (it goes up once, its tiles are cut there); None keeps it in host memory."""
        if self.device.type == "cuda" and 4 * 3 * p.height * p.width < self.budget // 10:
            return self.device
        return None

    def _stitch_device(self, output_values: int) -> torch.device:
        """Where an image's output is assembled: on the GPU when its accumulators
        (output + weights, float32) take under a tenth of the memory budget, so the
        tiles never cross PCIe in float32; else in host memory."""
        if self.device.type == "cuda" and output_values * 4 * 4 // 3 < self.budget // 10:
            return self.device
        return torch.device("cpu")

    def _batch_size(self, shape: tuple[int, int]) -> int:
        """Tiles per forward pass. On a CPU one: oneDNN computes a tile alone
        and in a batch with different kernels (ESPCN, 24 px tiles: 2.5e-7
        apart), which would make an image's bytes depend on its neighbours, and
        batching gained under 5% there (EDSR x4, 16 tiles of 32 px: 0.445 s vs
        0.423 s). On CUDA as many as the budget allows, up to MAX_BATCH."""
        if self.device.type != "cuda":
            return 1
        if self.batch_size:
            return self.batch_size
        limit = self.memory_batch(shape)
        return min(limit, self.tuned_batch) if self.tuned_batch else limit

    def memory_batch(self, shape: tuple[int, int]) -> int:
        """Tiles of this shape whose activations fit the memory budget together (at most MAX_BATCH)."""
        limit = self.budget // max(1, self.bytes_per_pixel * shape[0] * shape[1])
        return int(max(1, min(MAX_BATCH, limit)))

    def _forward(self, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Model forward on a batch of tiles (N, C, h, w) float32 -> float32 on the
        engine's device (the stitcher moves it where the image is assembled)."""
        h, w = batch.shape[-2:]
        batch, crop = self._pad_to_requirements(batch)
        started = time.perf_counter()
        if dtype != self.dtype:
            module = self._module_fp32()
        else:
            module = self.module if self._compiled is None else self._compiled
            if self._compiled is not None and self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are stitched already
        out = self._run(module, batch, dtype).float()
        if dtype != torch.float32:
            # A tile's sum is finite exactly when its values are (or they overflow float32: also redone);
            # one reduction instead of a mask the size of the output (0.07 ms vs 1.7 ms on 768 x 512).
            bad = ~torch.isfinite(out.flatten(1).sum(dim=1))
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

    def _private_module(self, dtype: torch.dtype) -> torch.nn.Module:
        """This engine's own copy of the model, in `dtype`, from the model's own weights
        (not from a half-precision copy, whose rounding fp32 would then keep)."""
        module = copy.deepcopy(self.model.module).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        # channels_last suits cuDNN and oneDNN alike (EDSR on this CPU: 17% faster).
        return module.to(self.device, dtype=dtype, memory_format=torch.channels_last)

    def _module_fp32(self) -> torch.nn.Module:
        if self._fp32_module is None:
            self._fp32_module = self._private_module(torch.float32)
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


def compiled(module: torch.nn.Module, device: torch.device):
    """`torch.compile` for the repeated tile shapes of a run (each new shape compiles once):
    on CUDA with CUDA graphs (a forward pass's kernel launches replayed as one), on a CPU
    with frozen weights (oneDNN's prepacked convolutions). The fp32 fallback for tiles with
    NaN or Inf stays eager: it is rare, and a compile would cost more than it saves."""
    options = {"triton.cudagraphs": True} if device.type == "cuda" else {"freezing": True}
    return torch.compile(module, dynamic=False, options=options)


@dataclass
class _Prepared:
    """An image as given, plus how its pixels map to model input [0, 1] and
    back. Pixels are converted when asked for, in whole or by rows, so the
    banded interpolation never holds a float copy of the whole image."""

    pixels: np.ndarray  # H x W x C, as given
    value_range: tuple[float, float] | None  # float images mapped by min/max

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def dtype(self) -> np.dtype:
        return self.pixels.dtype

    @property
    def gray(self) -> bool:
        return self.channels in (1, 2)

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    def unit(self, lo: int = 0, hi: int | None = None, device: torch.device | None = None) -> torch.Tensor:
        """Rows [lo, hi) of every channel as (C, rows, W) float32 in [0, 1]. To a CUDA
        `device`, 8-bit pixels go up as they are (a quarter of float32's bytes, from pinned
        memory) and are converted there; tiles are then cut on the device."""
        rows = self.pixels[lo:hi]
        if device is not None and device.type == "cuda" and rows.dtype == np.uint8:
            pixels = torch.from_numpy(np.ascontiguousarray(rows)).pin_memory().to(device, non_blocking=True)
            return pixels.permute(2, 0, 1).float().div_(255.0)
        if rows.dtype in (np.uint8, np.uint16):
            unit = rows.astype(np.float32) / float(np.iinfo(rows.dtype).max)
        elif rows.dtype == np.int16:  # the type's full range, -32768..32767 -> 0..1
            unit = (rows.astype(np.float32) + 32768.0) / 65535.0
        else:
            unit = rows.astype(np.float32)
            if self.value_range is not None:
                low, high = self.value_range
                unit = (unit - low) / (high - low)
            unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
        return torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))

    def color(self, device: torch.device | None = None) -> torch.Tensor:
        """(3, H, W) model input; a gray image as three equal planes."""
        unit = self.unit(device=device)
        if self.gray:
            return unit[:1].expand(3, -1, -1).contiguous()
        return unit[:3]

    def alpha(self) -> torch.Tensor:
        """(1, H, W)"""
        return self.unit()[-1:]

    def restore(self, color: torch.Tensor, alpha: torch.Tensor | None) -> np.ndarray:
        """Back to the input's dtype and layout, quantised where `color` is (on a
        GPU, only the final integer image crosses to the host). `color` has 3
        planes, or 1 for a gray image resized as one plane."""
        if self.gray and color.shape[0] == 3:
            color = color.mean(dim=0, keepdim=True)
        planes = color if alpha is None else torch.cat([color, alpha.to(color.device)], dim=0)
        planes = planes.permute(1, 2, 0)
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            # Into a new H x W x C array, then in place: one pass in the output's order, no temporaries
            # (768 x 512 RGB: 0.8 ms, against 2.8 ms for clamp, scale and round on the permuted view).
            unit = torch.clamp(planes, 0.0, 1.0, out=planes.new_empty(planes.shape)).mul_(float(info.max - info.min))
            if info.min:  # int16: 0 maps to -32768
                unit.add_(float(info.min))
            if unit.device.type == "cpu":
                # NumPy, one thread: torch's round runs an OpenMP region even on a 64 x 64 image, which
                # cost 8 ms instead of 3 us whenever another process kept the second core busy.
                array = unit.numpy()
                array = np.rint(array, out=array).astype(self.dtype)
            else:
                wide = torch.uint8 if self.dtype == np.uint8 else torch.int32  # torch has no full uint16
                array = unit.round().to(wide).cpu().numpy().astype(self.dtype, copy=False)
        else:
            if self.value_range is not None:
                lo, hi = self.value_range
                planes = planes * (hi - lo) + lo
            array = planes.cpu().numpy().astype(self.dtype, copy=False)
        return np.ascontiguousarray(array)  # encoders such as libpng need C order


def _same_layout(prepared: list[_Prepared]) -> list[list[int]]:
    """Indices of the images that can share a resize: same size, channels and dtype."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault((p.height, p.width, p.channels, p.dtype), []).append(i)
    return list(groups.values())


def _to_unit(pixels: np.ndarray) -> _Prepared:
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an H x W x C image with 1 to 4 channels, got shape {pixels.shape}")
    value_range = None
    if np.issubdtype(pixels.dtype, np.floating):
        unit = pixels.astype(np.float32)
        finite = unit[np.isfinite(unit)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:
            value_range = (lo, hi if hi > lo else lo + 1.0)
    elif pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError(f"unsupported pixel type {pixels.dtype}")
    return _Prepared(pixels, value_range)
