"""The model zoo: load a model by registry name, local path or fsspec URL.

Checkpoints are recognised from their keys and shapes, in the manner of
spandrel: first by this package's own architectures (one folder each:
srcnn, espcn, edsr, rcan, span, compact — each with `detect` and `build`), so
BasicSR EDSR and RCAN, SPAN and Real-ESRGAN Compact files load natively, then by spandrel for everything else.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import compact, edsr, espcn, rcan, span, srcnn
from .base import LoadedModel, ModelLoadError, NativeArch, StateDict
from .interpolation import INTERPOLATIONS
from .spandrel_adapter import load_with_spandrel
from .weights import file_path, metadata_hints, read_state_dict, save_model

# Detection order matters only where key sets overlap: SRCNN and ESPCN share
# conv1..conv3 and differ by conv3's width.
NATIVE_ARCHS: tuple[NativeArch, ...] = (srcnn.ARCH, espcn.ARCH, edsr.ARCH, rcan.ARCH, span.ARCH, compact.ARCH)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class NamedModel:
    """A model known by name: an interpolation, or bundled/hosted weights
    (a file name in pipeline/weights or a URL)."""

    arch: str
    scale: int | None = None  # None: any scale (interpolation)
    weights: str | None = None
    params: int = 0
    description: str = ""


NAMED_MODELS: dict[str, NamedModel] = {
    "bicubic": NamedModel("bicubic", description="MATLAB-compatible bicubic interpolation"),
    "lanczos": NamedModel("lanczos", description="Lanczos-3 interpolation"),
    # Trained by this project (pipeline/train, configs/edsr-x2.toml); card: models/cards/edsr-x2.md
    "edsr-x2": NamedModel("EDSR", scale=2, weights="edsr-x2.safetensors", params=605_379,
                          description="EDSR 48 features x 12 blocks, trained on Kodak + Urban100 img_021-060; "
                                      "Set5 x2 36.86 dB PSNR-Y"),
    # Trained by this project on a lent H200 (configs/edsr-x4.toml, then edsr-x4-finetune.toml);
    # card: models/cards/edsr-x4.md
    "edsr-x4": NamedModel("EDSR", scale=4, weights="edsr-x4.safetensors", params=1_443_715,
                          description="EDSR 64 features x 15 blocks, trained on Kodak + Urban100 img_021-060; "
                                      "Set5 x4 31.09 dB PSNR-Y"),
}


def default_model(scale: float | None = None) -> str:
    """The bundled model for an output scale: the smallest trained scale that
    reaches it (x1.5 -> edsr-x2, x3 -> edsr-x4 then resized down), the largest
    for bigger scales (repeated passes), bicubic when nothing is upscaled.
    No scale means the models' own: the x4 model."""
    trained = sorted((m.scale, name) for name, m in NAMED_MODELS.items() if m.weights and m.scale)
    if not trained:
        return "bicubic"
    if scale is None:
        return next((name for s, name in trained if s == 4), trained[-1][1])
    if scale <= 1:
        return "bicubic"
    return next((name for s, name in trained if s >= scale), trained[-1][1])


def load_model(spec: str, *, scale: int | None = None, storage_options: dict | None = None) -> LoadedModel:
    """A registry name, a local path or an fsspec URL -> LoadedModel.

    `scale` only applies to scale-free models (bicubic, lanczos; default 4).
    """
    spec = os.fspath(spec)
    named = NAMED_MODELS.get(spec)
    if named is not None and named.arch in INTERPOLATIONS:
        return _interpolation(spec, named.arch, 4 if scale is None else scale)
    if named is not None:
        uri = named.weights if "://" in named.weights else str(WEIGHTS_DIR / named.weights)
        model = _load_file(uri, storage_options)
        model.name = spec
        return model
    if "/" not in spec and "." not in spec and not Path(spec).exists():
        raise ModelLoadError(f"unknown model {spec!r}: not a named model ({', '.join(NAMED_MODELS)}) nor a file")
    return _load_file(spec, storage_options)


def list_models() -> list[dict]:
    """What `upscaler models` prints: the named models (files load by path)."""
    return [
        {
            "name": name,
            "arch": m.arch,
            "scale": "any" if m.scale is None else m.scale,
            "params": m.params,
            "weights": m.weights or "none (parameter-free)",
        }
        for name, m in NAMED_MODELS.items()
    ]


def _interpolation(name: str, arch: str, scale: int) -> LoadedModel:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ModelLoadError(f"{name}: scale must be a positive integer, not {scale!r}")
    scale = int(scale)
    module = INTERPOLATIONS[arch](scale).eval()
    return LoadedModel(
        name=name,
        arch=arch,
        module=module,
        scale=scale,
        in_channels=3,
        out_channels=3,
        overlap=module.overlap,
        config={"kernel": module.kernel},
    )


def _load_file(uri: str, storage_options: dict | None) -> LoadedModel:
    state_dict, metadata, sha256 = read_state_dict(uri, storage_options)
    name = PurePosixPath(file_path(uri)).stem
    hints = metadata_hints(metadata)
    for arch in NATIVE_ARCHS:
        try:
            config = arch.detect(state_dict, hints)
        except ModelLoadError as error:
            raise ModelLoadError(f"{uri}: {error}") from error
        if config is not None:
            return _load_native(arch, config, state_dict, name=name, source=uri, sha256=sha256)
    return load_with_spandrel(state_dict, name=name, source=uri, sha256=sha256)


def _load_native(arch: NativeArch, config: dict, state_dict: StateDict, **fields) -> LoadedModel:
    module = arch.build(config)
    try:
        module.load_state_dict(arch.convert(state_dict), strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"{fields['source']}: looks like {arch.name} but the weights do not fit: {error}") from error
    module = module.float().eval().requires_grad_(False)
    return LoadedModel(
        arch=arch.name,
        module=module,
        scale=config["scale"],
        in_channels=config["num_in_ch"],
        out_channels=config["num_out_ch"],
        overlap=arch.overlap(config),
        supports_half=arch.supports_half,
        supports_bf16=arch.supports_bf16,
        params=sum(p.numel() for p in module.parameters()),
        config=config,
        **fields,
    )


__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "NAMED_MODELS",
    "default_model",
    "NamedModel",
    "list_models",
    "load_model",
    "read_state_dict",
    "save_model",
]
