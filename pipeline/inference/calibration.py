"""Measured speed per (model, device, precision): what `upscaler calibrate` stores, and what
the engine and `upscaler plan` read.

The memory formula gives the largest tile that fits; the fastest is often smaller (on a
CPU, tiles whose feature maps stay in cache), and only a measurement says which. So
`measure_tiles` times the forward pass of each candidate tile (and, on CUDA, batch size)
and counts only the output a tile contributes once its overlap is shared with its
neighbours; an engine with an automatic tile then uses the fastest, never above what its
memory budget allows. The cache is one JSON file per user (`UPSCALER_CACHE`, else
`~/.cache/upscaler`), keyed by the network's shape (architecture, hyper-parameters and
parameter count: speed does not depend on the weights' values, so retrained or fine-tuned
weights keep it) and the kind of device; nothing in it changes a run's settings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

CANDIDATE_TILES = (48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
CANDIDATE_BATCHES = (1, 2, 4, 8, 16, 32)


def cache_path() -> Path:
    root = os.environ.get("UPSCALER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "upscaler")
    return Path(root) / "calibration.json"


def device_name(device) -> str:
    """"cpu", or "cuda:<card name>": a calibration holds for any card of that kind."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(device.index or 0)
    return device.type


def model_id(model) -> str:
    """What a calibration holds for: the network's shape, not its weights."""
    return f"{model.arch} {json.dumps(model.config, sort_keys=True, default=str)} {model.params}"


def key(model_id: str, device: str) -> str:
    return f"{model_id}|{device}"


def load() -> dict:
    try:
        table = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def lookup(model_id: str, device: str) -> dict | None:
    entry = load().get(key(model_id, device))
    return entry if isinstance(entry, dict) else None


def store(entry: dict) -> Path:
    """Add or replace one (model, device) entry; the file is replaced whole, never half written."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    table = load()
    table[key(entry["model_id"], entry["device"])] = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def tuned(model_id: str, device: str, precision: str) -> tuple[int | None, int | None]:
    """(tile, batch) measured fastest for this model on this kind of device at this
    precision, or (None, None) when it was not calibrated so."""
    entry = lookup(model_id, device)
    if not entry or entry.get("precision") != precision:
        return None, None
    tile, batch = entry.get("best_tile"), entry.get("best_batch")
    return (int(tile) if isinstance(tile, int) and tile > 0 else None,
            int(batch) if isinstance(batch, int) and batch > 0 else None)


def measure_tiles(upscaler, seconds: float) -> dict:
    """Effective output Mpx/s of each candidate tile (and batch size on CUDA) the engine's
    memory allows: {"tiles": {tile: Mpx/s}, "batches": {batch: Mpx/s}, "best_tile", "best_batch"}.
    A tile's effective output is its side less the overlap, squared, times scale²: what
    it adds to a large image once neighbours share the overlap."""
    limit = upscaler.memory_tile()
    m = max(1, upscaler.model.size_multiple)
    candidates = sorted({t // m * m for t in CANDIDATE_TILES if upscaler.min_tile <= t // m * m <= limit}) \
        or [upscaler.min_tile]
    per = seconds / (len(candidates) + (len(CANDIDATE_BATCHES) if upscaler.device.type == "cuda" else 0))
    tiles = {t: _rate(upscaler, t, 1, per) for t in candidates}
    best_tile = max(tiles, key=tiles.get)
    batches = {}
    if upscaler.device.type == "cuda":
        fits = upscaler.memory_batch((best_tile, best_tile))
        batches = {b: _rate(upscaler, best_tile, b, per) for b in CANDIDATE_BATCHES if b <= fits}
    return {"tiles": {str(t): round(v, 4) for t, v in tiles.items()},
            "batches": {str(b): round(v, 4) for b, v in batches.items()},
            "best_tile": best_tile, "best_batch": max(batches, key=batches.get) if batches else None}


def _rate(upscaler, tile: int, batch: int, seconds: float) -> float:
    import torch

    generator = torch.Generator().manual_seed(0)
    tiles = torch.rand(batch, 3, tile, tile, generator=generator)
    upscaler._forward(tiles, upscaler.dtype)  # warm-up: a shape's first pass allocates, picks kernels (compiles)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 1:
        upscaler._forward(tiles, upscaler.dtype)
        done += 1
    useful = max(1, tile - upscaler.overlap) ** 2 * upscaler.model.scale**2 * batch
    return useful * done / (time.perf_counter() - started) / 1e6
