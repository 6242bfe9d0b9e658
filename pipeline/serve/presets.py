"""Which model a request gets: presets ("photo", "anime", the operator's) and the named
models `upscaler models` lists. A client names one of these, never a path or a URL
(that would let it read any file, or fetch from anywhere, on the server's behalf).

Loaded models are shared by the inference threads (each builds its own Upscaler from
them); each is loaded once, on first use, except the default, loaded at start-up.
"""

from __future__ import annotations

import threading
from pathlib import PurePosixPath

from pipeline.models import NAMED_MODELS, default_model, load_model
from pipeline.models.interpolation import INTERPOLATIONS
from pipeline.serve.errors import ApiError

PRESET_TEXT = {"photo": "photographs", "anime": "anime and line art"}
BUNDLED_PHOTO = "photographs: the bundled model for the scale (edsr-x2 up to x2, else edsr-x4)"


class Presets:
    def __init__(self, presets: dict):
        self.presets = dict(presets)  # name -> spec; "photo" absent: the bundled model for the scale
        self._loaded: dict = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        extra = [n for n in self.presets if n not in ("photo", "anime") and n not in NAMED_MODELS]
        return ["photo", "anime", *extra, *NAMED_MODELS]

    def spec_for(self, name: str | None, scale: float | None) -> str:
        """The model spec a request's `model` resolves to (422 when there is none)."""
        name = name or "photo"
        if name in self.presets:
            return self.presets[name]
        if name == "photo":
            return default_model(scale)
        if name == "anime":
            raise ApiError(422, "no anime model configured (serve --model anime=PATH)")
        if name in NAMED_MODELS:
            return name
        raise ApiError(422, f"unknown model {name!r}; choose one of {', '.join(self.names())}")

    def load(self, spec: str, scale_hint: int):
        """The LoadedModel for a spec (a scale-free model at `scale_hint`), loaded once."""
        key = (spec, scale_hint if is_interpolation(spec) else None)
        with self._lock:
            model = self._loaded.get(key)
            if model is None:
                model = self._loaded[key] = load_model(spec, scale=scale_hint)
            return model

    def describe(self) -> list[dict]:
        """`GET /v1/models`'s list: every preset, available or why not."""
        rows = []
        for name in self.names():
            try:
                spec = self.spec_for(name, None)
                available, reason = True, None
            except ApiError as error:
                spec, available, reason = None, False, error.message
            if name in NAMED_MODELS and name not in self.presets:
                text = NAMED_MODELS[name].description
            elif name in self.presets:
                text = f"{PRESET_TEXT.get(name, 'operator-configured model')}: {public_name(self.presets[name])}"
            else:
                text = BUNDLED_PHOTO if name == "photo" else PRESET_TEXT.get(name, "")
            rows.append({"name": name, "model": public_name(spec) if spec else None, "description": text, "available": available, "reason": reason})
        return rows


def public_name(spec: str) -> str:
    """A spec as clients see it: a named model's name, a file's name without its folder
    (the server's paths are none of their business)."""
    return spec if spec in NAMED_MODELS else PurePosixPath(spec.rstrip("/")).name


def is_interpolation(spec: str) -> bool:
    named = NAMED_MODELS.get(spec)
    return named is not None and named.arch in INTERPOLATIONS
