"""Training data: HR images from any fsspec folder, LR made once with the
MATLAB-compatible bicubic and kept in memory, random aligned crops.

Why MATLAB bicubic on uint8: the benchmarks' LR images are made that way
(rounded after each pass); training on any other downscaler costs several
tenths of a dB on Set5/Set14. Why per-sample RNGs derived from (seed, step,
index): a batch is then a pure function of the step, so resuming replays
exactly the same data and the result does not depend on the number of
workers (each worker builds its own slice of the same global batch).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from pipeline import formats, store
from pipeline.inference.resize import imresize

from .config import DataConfig


@dataclass
class Pair:
    key: str
    hr: np.ndarray  # H x W x 3 uint8, H and W multiples of the scale
    lr: np.ndarray  # (H / scale) x (W / scale) x 3 uint8, MATLAB bicubic


def make_pair(key: str, pixels: np.ndarray, scale: int, max_side: int = 0) -> Pair:
    hr = formats.to_rgb8(pixels)
    if max_side:
        h, w = hr.shape[:2]
        top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        hr = hr[top : top + max_side, left : left + max_side]
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    hr = np.ascontiguousarray(hr[:h, :w])
    return Pair(key, hr, imresize(hr, 1 / scale))


def list_images(url: str, storage_options: dict | None = None) -> list[store.Source]:
    return sorted(store.list_sources(url, storage_options=storage_options), key=lambda s: s.key)


def load_pairs(sources: list[store.Source], scale: int, storage_options: dict | None = None,
               max_side: int = 0, scale_augment: list[float] = ()) -> list[Pair]:
    """One pair per image, plus one per `scale_augment` factor: the image
    downscaled by that factor (MATLAB bicubic) and then treated as an HR image."""
    pairs = []
    for source in sources:
        decoded = formats.decode_image(store.read_bytes(source.uri, storage_options), name=source.uri)
        pairs.append(make_pair(source.key, decoded.pixels, scale, max_side))
        for factor in scale_augment:
            smaller = imresize(pairs[-1].hr, factor)
            pairs.append(make_pair(f"{source.key}@{factor:g}", smaller, scale, max_side))
    return pairs


def fingerprint(pixels: np.ndarray) -> str:
    """Hash of an image's pixels cropped (top left) to a multiple of 12, so an
    image and its benchmark copy modcropped for x2, x3 or x4 hash alike."""
    rgb = formats.to_rgb8(pixels)
    h, w = rgb.shape[0] // 12 * 12, rgb.shape[1] // 12 * 12
    return hashlib.sha256(np.ascontiguousarray(rgb[:h, :w]).tobytes()).hexdigest()


def benchmark_leaks(pairs: list[Pair], benchmark_urls: list[str], storage_options: dict | None = None) -> list[str]:
    """'training key = benchmark key' for every pair whose HR is a benchmark image:
    a model scored on images it was trained on reports a PSNR it does not have."""
    known = {}
    for url in benchmark_urls:
        for source in list_images(url, storage_options):
            decoded = formats.decode_image(store.read_bytes(source.uri, storage_options), name=source.uri)
            known[fingerprint(decoded.pixels)] = source.uri
    return [f"{p.key} = {known[f]}" for p in pairs if (f := fingerprint(p.hr)) in known]


def _names(key: str) -> set[str]:
    """The names a validation image may be given by: its key, file name or stem
    (so a lossless re-encoding of the training folder keeps the same split)."""
    base = posixpath.basename(key)
    return {key, base, posixpath.splitext(base)[0]}


def split_sources(cfg: DataConfig) -> tuple[list[store.Source], list[store.Source]]:
    """(training, validation) sources. Validation images named in
    `val_images` (by key, file name or stem) are removed from the training set."""
    train = []
    for url in [cfg.hr, *cfg.extra_hr]:
        if url:
            train += list_images(url, cfg.storage_options)
    if not train:
        raise FileNotFoundError(f"no training images under {[cfg.hr, *cfg.extra_hr]}")
    # A name with an image extension also matches the same stem in another format
    # (kodim03.png names kodim03.webp of a lossless re-encoding).
    wanted = {name: {name, store.split_extension(name)[0]} if "." in name else {name} for name in cfg.val_images}
    val = [s for s in train if any(_names(s.key) & names for names in wanted.values())]
    found = set().union(*(_names(s.key) for s in val))
    missing = {name for name, names in wanted.items() if not names & found}
    if missing:
        raise FileNotFoundError(f"validation images not found among the training images: {sorted(missing)}")
    train = [s for s in train if s not in val]
    if cfg.val_hr:
        extra = list_images(cfg.val_hr, cfg.storage_options)
        val += extra[: cfg.val_count] if cfg.val_count else extra
    return train, val


class PatchSampler:
    """Global batch `step` -> the (LR, HR) float tensors of samples
    [start, stop), in [0, 1], NCHW."""

    def __init__(self, pairs: list[Pair], cfg: DataConfig, scale: int, seed: int):
        # Images smaller than a crop (T91 has 78 px ones) cannot give one: left out, and said.
        self.skipped = [p.key for p in pairs if min(p.lr.shape[:2]) < cfg.lr_patch]
        pairs = [p for p in pairs if min(p.lr.shape[:2]) >= cfg.lr_patch]
        if not pairs:
            raise ValueError(f"every training image is smaller than the LR patch ({cfg.lr_patch}) x{scale}")
        self.pairs, self.cfg, self.scale, self.seed = pairs, cfg, scale, seed
        self.degrade = cfg.blur_prob > 0 or cfg.noise_prob > 0 or cfg.jpeg_prob > 0
        # Sample images in proportion to their area, so big images are not under-used.
        areas = np.array([p.lr.shape[0] * p.lr.shape[1] for p in pairs], dtype=np.float64)
        self.weights = areas / areas.sum()

    def sample(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, step, index])
        pair = self.pairs[rng.choice(len(self.pairs), p=self.weights)]
        p, s = self.cfg.lr_patch, self.scale
        top = int(rng.integers(0, pair.lr.shape[0] - p + 1))
        left = int(rng.integers(0, pair.lr.shape[1] - p + 1))
        hr = pair.hr[top * s : (top + p) * s, left * s : (left + p) * s]
        lr = degrade(hr, s, self.cfg, rng) if self.degrade else pair.lr[top : top + p, left : left + p]
        if self.cfg.flip and rng.random() < 0.5:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        if self.cfg.flip and rng.random() < 0.5:
            lr, hr = lr[::-1], hr[::-1]
        if self.cfg.rot90 and rng.random() < 0.5:
            lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
        return lr, hr

    def batch(self, step: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        lrs, hrs = zip(*(self.sample(step, i) for i in range(start, stop)))
        return to_tensor(np.stack(lrs)), to_tensor(np.stack(hrs))


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)


def degrade(hr: np.ndarray, scale: int, cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """Real-ESRGAN-style first-order degradation of an HR crop: optional
    gaussian blur, MATLAB bicubic downscale, optional gaussian noise,
    optional JPEG (Pillow). Returns the uint8 LR crop."""
    img = hr
    if rng.random() < cfg.blur_prob:
        sigma = float(rng.uniform(*cfg.blur_sigma))
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(sigma)))
    lr = imresize(np.ascontiguousarray(img), 1 / scale)
    if rng.random() < cfg.noise_prob:
        sigma = float(rng.uniform(*cfg.noise_sigma))
        lr = np.clip(lr + rng.normal(0.0, sigma, lr.shape), 0, 255).round().astype(np.uint8)
    if rng.random() < cfg.jpeg_prob:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        buffer = io.BytesIO()
        Image.fromarray(lr).save(buffer, format="JPEG", quality=quality)
        lr = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return lr
