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
import zipfile

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
    entries of its dict (e.g. "scale"), as strings. Anything that cannot be
    fetched, or is not a weights file, is a ModelLoadError saying which and
    why in one line: a raw loader error ("101", "header too small") tells the
    user nothing about the file they passed.
    """
    data = _fetch(uri, storage_options)
    sha256 = hashlib.sha256(data).hexdigest()
    if _looks_like_safetensors(data) or (
        file_path(uri).lower().endswith(".safetensors") and _torch_container(data) is None
    ):
        state_dict, metadata = _read_safetensors(uri, data)
    else:
        state_dict, metadata = _read_pickle(uri, data)
    if not state_dict:
        raise ModelLoadError(f"{uri} holds no weight tensors")
    return state_dict, metadata, sha256


def file_path(uri: str) -> str:
    """The path part of a (possibly chained, possibly signed) URL."""
    return uri.split("::")[-1].split("?")[0]


def _fetch(uri: str, storage_options: dict | None) -> bytes:
    """The file's bytes. Any failure of the filesystem (fsspec backends raise
    their own types: aiohttp's, botocore's NoCredentialsError...) becomes one
    line naming the location and the root cause, e.g. "connection refused"."""
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            return f.read()
    except Exception as error:
        verb = "could not be fetched" if "://" in uri or "::" in uri else "could not be read"
        raise ModelLoadError(f"{uri}: {verb}: {_root_cause(error, uri)}") from error


def _root_cause(error: BaseException, uri: str) -> str:
    """One line for why a fetch failed: the innermost exception that says more
    than the URL (fsspec's HTTP filesystem raises FileNotFoundError(url) from
    aiohttp's error), with a refused connection or a missing file said plainly."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in reversed(chain):
        if isinstance(item, ConnectionRefusedError) or "connect call failed" in str(item).lower():
            return "connection refused"
    for item in chain:
        if isinstance(item, FileNotFoundError) and item.filename:
            return f"no such file ({item.filename})"
        if isinstance(getattr(item, "status", None), int):  # aiohttp's ClientResponseError: "HTTP 404 Not Found"
            return " ".join(f"HTTP {item.status} {getattr(item, 'message', '') or ''}".split())
    for item in reversed(chain):
        text = " ".join(str(item).split())
        if text and text.strip("'\"") != uri and text.strip("'\"") != file_path(uri):
            line = f"{type(item).__name__}: {text}" if len(text) < 20 else text
            return line if len(line) <= 300 else line[:297] + "..."
    if any(isinstance(item, FileNotFoundError) for item in chain):
        return "not found"
    return type(error).__name__


def _looks_like_safetensors(data: bytes) -> bool:
    """A JSON header after the 8-byte length: safetensors under another name
    (e.g. a URL without extension). PyTorch files are zips or pickles."""
    return data[8:10] == b'{"'


def _torch_container(data: bytes) -> str | None:
    """The container torch.save writes, from the first bytes: a zip (the format
    since PyTorch 1.6), a protocol 2+ pickle (the legacy format) or a tar (older
    still); None for anything else."""
    if data[:4] == b"PK\x03\x04":
        return "zip archive"
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "pickle"
    if data[257:262] == b"ustar":
        return "tar archive"
    return None


def _not_weights(uri: str, reason: str) -> ModelLoadError:
    return ModelLoadError(f"{uri}: not a PyTorch or safetensors weights file: {reason}")


def _describe(data: bytes) -> str:
    """What a file that no loader took looks like, in words the user can act
    on: the commonest are an empty or truncated download, an HTML error or
    login page saved under the weights' name, and a Git LFS pointer."""
    if not data:
        return "the file is empty (0 bytes)"
    if len(data) >= 10 and _looks_like_safetensors(data):
        header_len = int.from_bytes(data[:8], "little")
        if 8 + header_len > len(data):
            return (f"a truncated safetensors file: its header says {header_len} bytes "
                    f"but only {len(data) - 8} follow (an interrupted download?)")
    head = data[:4096]
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights themselves (fetch them with `git lfs pull`)"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in lowered[:512]:
        title = re.search(rb"<title[^>]*>(.*?)</title>", head, re.IGNORECASE | re.DOTALL)
        named = f" ({' '.join(title.group(1).decode('utf-8', 'replace').split())[:80]!r})" if title else ""
        return f"an HTML page{named}, e.g. a server's error or login page saved under the weights' name"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut at 4096 still counts as text
        text = head[: error.start].decode("utf-8") if error.start > len(head) - 4 else ""
    if text and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        return f"a text file, starting {first[:60]!r}"
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, ValueError, OSError) as error:
            return f"a damaged or truncated zip archive ({error})"
        if not any(name.endswith("data.pkl") for name in names):
            return "a zip archive without data.pkl, so not a PyTorch checkpoint"
    return f"unrecognised content (first bytes {data[:8].hex(' ')}, {len(data)} bytes)"


def _read_safetensors(uri: str, data: bytes) -> tuple[StateDict, dict[str, str]]:
    try:
        state_dict = safetensors.torch.load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as error:  # safetensors raises its own error types
        reason = _describe(data)
        if reason.startswith("unrecognised content") and _looks_like_safetensors(data):
            reason = f"a damaged safetensors file ({_first_line(error)})"
        raise _not_weights(uri, reason) from error
    return state_dict, dict(metadata)


def _read_pickle(uri: str, data: bytes) -> tuple[StateDict, dict[str, str]]:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        container = _torch_container(data)
        if isinstance(error, pickle.UnpicklingError) and container and _is_refusal(error):
            raise ModelLoadError(
                f"refusing to load {uri}: it is not a plain weights file ({_refusal_reason(error)}); "
                "re-save it as safetensors or a state dict"
            ) from error
        if container is None or container == "zip archive" and not _torch_zip(data):
            raise _not_weights(uri, _describe(data)) from error
        raise _not_weights(uri, f"a {container} that PyTorch cannot read ({_torch_reason(error)})") from error
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{uri} holds a {type(obj).__name__}, not a dict of weights")
    return unwrap(obj)


def _torch_zip(data: bytes) -> bool:
    """A readable zip with the data.pkl every torch.save archive has."""
    try:
        return any(name.endswith("data.pkl") for name in zipfile.ZipFile(io.BytesIO(data)).namelist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return False


def _is_refusal(error: Exception) -> bool:
    """torch's weights_only unpickler refusing an object (a global it does not
    allow), as opposed to bytes that are no pickle at all ("Unsupported operand")."""
    text = str(error)
    return "GLOBAL" in text or ("global" in text.lower() and "unsupported operand" not in text.lower())


def _torch_reason(error: Exception) -> str:
    """torch's own line about the bytes: for the weights_only unpickler that is the
    "WeightsUnpickler error:" line, not the advice about trusting the source before it."""
    if match := re.search(r"WeightsUnpickler error:\s*(.+)", str(error)):
        return match.group(1).strip()
    return _first_line(error)


def _first_line(error: Exception) -> str:
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    text = text or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


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
