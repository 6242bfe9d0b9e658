"""Training configuration: one dataclass per concern, read from TOML (or YAML
when PyYAML is installed), then overridden by command-line flags.

Why dataclasses: a typo in a config key fails loudly at load time instead of
being silently ignored hours into a run, and the resolved config is saved
beside every checkpoint so a run can be reproduced from its own record.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

import fsspec


@dataclass
class DataConfig:
    hr: str = ""  # fsspec URL of a folder of HR images (searched recursively)
    extra_hr: list[str] = field(default_factory=list)  # more training folders
    storage_options: dict = field(default_factory=dict)
    lr_patch: int = 48  # LR crop size; the HR crop is lr_patch * scale
    batch_size: int = 16  # global batch, split across workers
    flip: bool = True
    rot90: bool = True
    # Validation: held out from the training folders (by file name) or the
    # first `val_count` images of a separate folder `val_hr`.
    # Extra copies of every training image downscaled by these factors (e.g. [0.5, 0.75]):
    # more distinct structures per pixel from a small archive, as DIV2K-style training does.
    scale_augment: list[float] = field(default_factory=list)
    val_images: list[str] = field(default_factory=list)
    val_hr: str = ""
    val_count: int = 0
    val_max_side: int = 0  # centre-crop validation HR to this size (0: whole image)
    # Benchmark folders (Set5, Set14, B100...): a training or validation image with the same
    # pixels as one of theirs (modcrop included) stops the run before it starts.
    benchmark_hr: list[str] = field(default_factory=list)
    # Real-ESRGAN-style degradations (applied to the HR crop, then downscaled).
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.2, 2.0)
    noise_prob: float = 0.0
    noise_sigma: tuple[float, float] = (1.0, 15.0)  # on the 0..255 scale
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (40, 95)


@dataclass
class ModelConfig:
    arch: str = "edsr"  # srcnn | espcn | edsr | rcan | span | compact | rrdb
    scale: int = 4
    options: dict = field(default_factory=dict)  # constructor arguments (num_feat, num_block, ...)
    init_from: str = ""  # weights to start from (shape-matching tensors only, e.g. x2 -> x4)
    init: str = ""  # "" (random) | "nearest": start as nearest-neighbour upsampling (SPAN)
    channels_last: bool = True  # ~17% faster on CPU for EDSR


@dataclass
class LossConfig:
    pixel: str = "l1"  # l1 | l2
    lambda_pix: float = 1.0
    lambda_perc: float = 0.0
    vgg_weights: str = ""  # LOCAL/fsspec path of VGG19 weights (torchvision layout); never downloaded
    perc_layers: dict = field(default_factory=lambda: {"conv5_4": 1.0})
    perc_criterion: str = "l1"
    lambda_adv: float = 0.0
    gan_type: str = "relativistic"  # relativistic | vanilla
    discriminator: str = "unet"  # unet | vgg
    disc_feat: int = 64
    lambda_tv: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | multistep | constant
    warmup_steps: int = 0
    min_lr: float = 1e-7  # cosine floor
    milestones: list[int] = field(default_factory=list)  # multistep
    gamma: float = 0.5  # multistep factor
    grad_clip: float = 0.0  # max global gradient norm; 0 disables
    ema_decay: float = 0.999  # 0 disables EMA (the raw weights are exported)
    lr_d: float = 1e-4  # discriminator


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    out: str = ""  # fsspec URL: checkpoints/, metrics.jsonl, config.json, model.safetensors
    export: str = ""  # extra copy of the final EMA weights (e.g. pipeline/weights/x.safetensors)
    val_every: int = 500
    ckpt_every: int = 500
    log_every: int = 50
    keep_checkpoints: int = 2
    threads: int = 0  # torch threads per worker; 0 = leave torch's default
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 0  # Ray Train workers; 0 = single process without Ray
    cpus_per_worker: float = 1.0
    progress: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(raw) - set(sections)
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))} (known: {', '.join(sections)})")
        config = cls()
        for name, values in raw.items():
            section = getattr(config, name)
            if not isinstance(values, dict):
                raise ValueError(f"config section [{name}] must be a table")
            for key, value in values.items():
                _set_field(section, name, key, value)
        return config

    def override(self, dotted: str, value: Any) -> None:
        """Set "section.key" (e.g. "loss.lambda_perc") to value."""
        name, _, key = dotted.partition(".")
        if not key or not hasattr(self, name):
            raise ValueError(f"bad override {dotted!r}: expected SECTION.KEY with SECTION in data, model, loss, optim, train")
        _set_field(getattr(self, name), name, key, value)


def _set_field(section: Any, name: str, key: str, value: Any) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    if key not in fields:
        raise ValueError(f"unknown setting {name}.{key} (known: {', '.join(fields)})")
    default = getattr(section, key)
    if isinstance(default, tuple):
        value = tuple(value)
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name}.{key} must be true or false, not {value!r}")
    elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif default is not None and not isinstance(value, type(default)):
        raise ValueError(f"{name}.{key} must be {type(default).__name__}, not {value!r}")
    setattr(section, key, value)


def parse_value(text: str) -> Any:
    """A CLI override value as TOML ("0.1", "true", "[1, 2]", '"x"'); bare
    words that are not TOML values are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_setting(text: str, *, strip: bool = False) -> tuple[str, Any]:
    """KEY=VALUE for --set and --storage-option. The split (first "=", a key
    required, the text never echoed in the error) is `pipeline.store.parse_key_value`,
    the CLI's; its JSON values stand, and where JSON does not parse the text the
    trainer's TOML syntax still applies ('x', {num_feat = 8}, 1_000, +1, dates).
    Unlike TOML alone, null/NaN/Infinity and JSON objects are values, not strings.
    `strip`: spaces around the key and value do not count (--set)."""
    from pipeline.store import parse_key_value  # on use: `upscaler --help` imports this module

    key, value = parse_key_value(text)
    if isinstance(value, str) and text == f"{key}={value}":  # JSON did not parse it (a JSON string is quoted)
        value = parse_value(value.strip() if strip else value)
    return (key.strip() if strip else key), value


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                storage_options: dict | None = None) -> Config:
    """Config from a TOML/YAML file (any fsspec URL) plus KEY=VALUE overrides."""
    raw: dict = {}
    if path:
        with fsspec.open(path, "rb", **(storage_options or {})) as f:
            data = f.read()
        if path.lower().endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError as error:
                raise ValueError(f"{path}: YAML configs need PyYAML (pip install pyyaml); or use TOML") from error
            raw = yaml.safe_load(data) or {}
        elif path.lower().endswith(".json"):
            raw = json.loads(data)
        else:
            raw = tomllib.loads(data.decode())
    config = Config.from_dict(raw)
    for item in overrides:
        try:
            key, value = parse_setting(item, strip=True)
        except ValueError:
            raise ValueError(f"bad override {item!r}: expected SECTION.KEY=VALUE") from None
        config.override(key, value)
    return config
