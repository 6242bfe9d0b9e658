"""Every architecture spandrel knows (ESRGAN, Compact, SwinIR, HAT, ...),
for checkpoints none of the native detectors claims.

We hand spandrel the tensors we already read safely, never a file, so it
has nothing to unpickle.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LoadedModel, ModelLoadError, StateDict


class SpandrelModule(nn.Module):
    """Runs a spandrel network as its descriptor would (some need an extra
    input channel or return a tuple), without the descriptor's padding and
    clamping, which the engine does itself."""

    def __init__(self, descriptor):
        super().__init__()
        self.model = descriptor.model
        self._call = descriptor._call_fn  # private in spandrel 0.4, but the only way to reuse it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(self.model, x)


# Architectures we also implement natively keep the native recommendation
# (RCAN's original head/body/tail layout loads through spandrel).
NATIVE_OVERLAP = {"RCAN": 48}


def overlap_for(arch: str, multiple_of: int) -> int:
    """32 input pixels: on the trained 18-conv Compact model, tiles blended
    with that overlap stay within 0.5/255 of the whole image, 16 leaves seams
    up to 5/255 (see the tests). Window-attention models (whose size
    requirement is their window) get at least two windows, since shifted
    windows mix each pixel with the next window over."""
    return NATIVE_OVERLAP.get(arch, max(32, 2 * multiple_of))


def load_with_spandrel(state_dict: StateDict, *, name: str, source: str, sha256: str) -> LoadedModel:
    import spandrel

    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(dict(state_dict))
    except spandrel.UnsupportedModelError as error:
        keys = ", ".join(list(state_dict)[:5])
        raise ModelLoadError(
            f"{source}: unknown architecture (not SRCNN, ESPCN, EDSR, RCAN, nor any of spandrel's); "
            f"first keys: {keys}"
        ) from error
    except Exception as error:  # a recognised architecture whose weights do not fit it
        raise ModelLoadError(f"{source}: spandrel could not build the model: {error}") from error
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ModelLoadError(
            f"{source}: {descriptor.architecture.id} is a {descriptor.purpose} model, not image-to-image super-resolution"
        )
    if descriptor.purpose == "FaceSR":
        raise ModelLoadError(f"{source}: {descriptor.architecture.id} restores aligned face crops, not whole images")
    module = SpandrelModule(descriptor).float().eval().requires_grad_(False)
    size = descriptor.size_requirements
    return LoadedModel(
        name=name,
        arch=descriptor.architecture.id,
        module=module,
        scale=descriptor.scale,
        in_channels=descriptor.input_channels,
        out_channels=descriptor.output_channels,
        size_multiple=size.multiple_of,
        min_size=size.minimum,
        square=size.square,
        overlap=overlap_for(descriptor.architecture.id, size.multiple_of),
        tiling=descriptor.tiling.name.lower(),
        supports_half=descriptor.supports_half,
        supports_bf16=descriptor.supports_bfloat16,
        params=sum(p.numel() for p in module.parameters()),
        sha256=sha256,
        source=source,
        config={"tags": list(descriptor.tags), "purpose": descriptor.purpose},
    )
