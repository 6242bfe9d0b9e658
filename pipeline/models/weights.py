"""Reading and writing weight files, from any fsspec location.

Reading never unpickles arbitrary objects: `.pth` files go through
`torch.load(weights_only=True)`, which only rebuilds tensors and plain
containers, so a checkpoint that would run code (or a pickled nn.Module) is
refused instead of executed.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re

import fsspec
import safetensors.torch
import torch

from .base import LoadedModel, ModelLoadError, StateDict

# Keys under which training frameworks nest the weights; first match wins, so
# BasicSR's EMA weights are preferred over the raw ones.
CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator", "g")


def read_state_dict(uri: str, storage_options: dict | None = None) -> tuple[StateDict, dict[str, str], str]:
    """(state dict, metadata, sha256 of the file's bytes) of a weight file.

    Metadata is the safetensors header's, or for a .pth the top-level scalar
    entries of its dict (e.g. "scale"), as strings.
    """
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            data = f.read()
    except (OSError, ValueError, ImportError) as error:
        raise ModelLoadError(f"cannot read {uri}: {error}") from error
    sha256 = hashlib.sha256(data).hexdigest()
    if file_path(uri).lower().endswith(".safetensors") or _looks_like_safetensors(data):
        state_dict, metadata = _read_safetensors(uri, data)
    else:
        state_dict, metadata = _read_pickle(uri, data)
    if not state_dict:
        raise ModelLoadError(f"{uri} holds no weight tensors")
    return state_dict, metadata, sha256


def file_path(uri: str) -> str:
    """The path part of a (possibly chained, possibly signed) URL."""
    return uri.split("::")[-1].split("?")[0]


def _looks_like_safetensors(data: bytes) -> bool:
    """A JSON header after the 8-byte length: safetensors under another name
    (e.g. a URL without extension). PyTorch files are zips or pickles."""
    return data[8:10] == b'{"'


def _read_safetensors(uri: str, data: bytes) -> tuple[StateDict, dict[str, str]]:
    try:
        state_dict = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as error:  # safetensors raises its own error types
        raise ModelLoadError(f"{uri} is not a valid safetensors file: {error}") from error
    return state_dict, dict(metadata)


def _read_pickle(uri: str, data: bytes) -> tuple[StateDict, dict[str, str]]:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"refusing to load {uri}: it is not a plain weights file ({_refusal_reason(error)}); "
            "re-save it as safetensors or a state dict"
        ) from error
    except Exception as error:
        raise ModelLoadError(f"cannot read {uri} as a PyTorch weights file: {error}") from error
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{uri} holds a {type(obj).__name__}, not a dict of weights")
    return unwrap(obj)


def _refusal_reason(error: Exception) -> str:
    """The one useful line of torch's long weights_only message."""
    text = str(error)
    if match := re.search(r"GLOBAL ([\w.]+)", text):
        return f"its pickle needs {match.group(1)}"
    if match := re.search(r"WeightsUnpickler error:\s*(.+)", text):
        return match.group(1).strip()
    return text.splitlines()[0] if text else type(error).__name__


def unwrap(obj: dict) -> tuple[StateDict, dict[str, str]]:
    """The tensors of a checkpoint dict, taken out of BasicSR/Lightning-style
    containers, with DataParallel's "module." prefix removed; scalar entries
    met on the way become metadata, anything else is dropped."""
    metadata: dict[str, str] = {}
    while True:
        for key, value in obj.items():
            if isinstance(key, str) and isinstance(value, (bool, int, float, str)):
                metadata.setdefault(key, value if isinstance(value, str) else json.dumps(value))
        inner = next((obj[k] for k in CONTAINER_KEYS if _holds_tensors(obj.get(k))), None)
        if inner is None:
            break
        obj = inner
    state_dict = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict, metadata


def _holds_tensors(value: object) -> bool:
    return isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values())


def metadata_hints(metadata: dict[str, str]) -> dict:
    """Metadata values JSON-decoded where they are JSON, with the entries of a
    "config" JSON object (as save_model writes it) merged in underneath."""
    hints: dict = {}
    for key, value in metadata.items():
        try:
            hints[key] = json.loads(value)
        except (TypeError, ValueError):
            hints[key] = value
    config = hints.pop("config", None)
    if isinstance(config, dict):
        hints = {**config, **hints}
    return hints


def save_model(model: LoadedModel, path: str, storage_options: dict | None = None) -> None:
    """Save as safetensors with metadata {"arch", "scale", "config" (JSON)}:
    everything load_model needs that the weights alone do not say."""
    state_dict = model_weights(model.module)
    if not state_dict:
        raise ValueError(f"{model.name} ({model.arch}) has no weights to save; load it by name instead")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    metadata = {"arch": model.arch, "scale": str(model.scale), "config": json.dumps(model.config)}
    data = safetensors.torch.save(tensors, metadata=metadata)
    with fsspec.open(path, "wb", **(storage_options or {})) as f:
        f.write(data)


def model_weights(module: torch.nn.Module) -> StateDict:
    """The state dict in the layout the file should have: a spandrel model's
    wrapper is left out, so the file holds the network's own keys."""
    from .spandrel_adapter import SpandrelModule

    return (module.model if isinstance(module, SpandrelModule) else module).state_dict()
