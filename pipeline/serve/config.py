"""The server's settings, checked once, before anything starts: `upscaler serve` builds
them from its options, the Ray Serve deployment from its YAML `args` (`from_dict`).

No torch here: a refused setting (`--no-auth` on 0.0.0.0) costs no import of the engine.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, fields

DEFAULT_MAX_PIXELS = 4096 * 4096  # input pixels of one upload
DEFAULT_MAX_OUTPUT_PIXELS = 16384 * 16384  # at x8 this allows 2048 x 2048 inputs
DEFAULT_MAX_UPLOAD_BYTES = 64 << 20
SCALES = (2, 3, 4, 8)  # what the page offers; any scale in [1, MAX_SCALE] is accepted
MAX_SCALE = 8.0


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    # presets: "photo" (None: the bundled model for the scale) and operator-named ones
    # ("anime"); a request names a preset or a named model, never a path
    models: dict = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"
    workers: int = 1  # inference threads, each owning its own Upscaler
    keys_file: str | None = None
    no_auth: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    time_limit: float | None = 60.0  # seconds per image, the engine's deadline
    queue_size: int = 32  # requests admitted at once (decoding, waiting, in a batch, encoding)
    max_batch: int = 8  # images sharing one Upscaler.upscale call
    batch_wait_ms: float = 5.0  # how long a batch waits for equal-shape company
    io_threads: int = 4  # decode and encode, off the event loop and off the inference thread
    allow_prefixes: tuple = ()  # where jobs may read and write; none: jobs disabled
    cors_origin: str | None = None
    address: str | None = None  # a Ray cluster: jobs run on the Ray executor there
    max_jobs: int = 1  # jobs running at once (the others wait, state "queued")
    storage_options: dict = field(default_factory=dict, repr=False)  # server-side only, never shown
    drain_seconds: float = 60.0  # SIGTERM: how long in-flight requests may take to finish

    def __post_init__(self):
        self.allow_prefixes = tuple(self.allow_prefixes)
        self.models = dict(self.models)

    @classmethod
    def from_dict(cls, values: dict) -> "ServeConfig":
        """From a plain dict (Ray Serve's YAML `args`); an unknown name is an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown server setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """Refuse settings that would open the server up or cannot work, in one line each."""
        if self.no_auth and not is_loopback(self.host):
            raise ValueError(f"--no-auth is refused on {self.host}: without keys anyone who reaches the port could "
                             "use the server; bind 127.0.0.1 or give --keys FILE")
        if not self.no_auth and not self.keys_file:
            raise ValueError("give --keys FILE (create keys with `upscaler serve keys add NAME --keys FILE`), "
                             "or --no-auth on a loopback host")
        for name in ("workers", "queue_size", "max_batch", "max_upload_bytes", "max_pixels", "max_output_pixels",
                     "io_threads", "max_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"--time-limit must be positive, not {self.time_limit}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch-wait-ms must be >= 0, not {self.batch_wait_ms}")
        for name in self.models:
            if not name or "/" in name:
                raise ValueError(f"preset name {name!r}: give NAME=SPEC with a plain name")

    @property
    def jobs_enabled(self) -> bool:
        return bool(self.allow_prefixes)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_model_option(values: list[str]) -> dict:
    """`--model SPEC` (the photo preset) and `--model NAME=SPEC` (more presets), repeatable."""
    models: dict = {}
    for text in values:
        name, sep, spec = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]+", name):  # a path or URL with "=" in it
            name, spec = "photo", text
        if not name or not spec:
            raise ValueError(f"--model {text!r}: give SPEC or NAME=SPEC")
        models[name] = spec
    return models
