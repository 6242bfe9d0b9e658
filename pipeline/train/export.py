"""Turning a run's exported weights into a file to ship: optionally stored
in fp16 (halves the size; `load_model` computes in fp32 either way, so only
the stored values are rounded — check PSNR before shipping), with a JSON
sidecar recording where the weights came from.

    python -m pipeline.train.export RUN/model.safetensors pipeline/weights/edsr-x4.safetensors --fp16 \
        [--note KEY=JSON ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import fsspec
import safetensors.torch
import torch

from pipeline.models.weights import read_state_dict
from pipeline.store import parse_key_value


def export_weights(src: str, dst: str, *, dtype: torch.dtype = torch.float32, extra: dict | None = None,
                   deploy: bool = False) -> dict:
    """Copy weights `src` -> `dst` with floating tensors cast to `dtype`,
    keeping the metadata (arch, scale, config); writes `dst` minus its
    extension + '.json' (the run's sidecar, when `src` has one, updated with
    the file's sha256, dtype and `extra`). Returns the sidecar record.
    `deploy`: the architecture's smallest layout for the same inference (SPAN's
    folded convs), with the config saying so."""
    state_dict, metadata, _ = read_state_dict(src)
    if deploy:
        state_dict, metadata = _deployed(src, state_dict, metadata)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    data = safetensors.torch.save(tensors, metadata={**metadata, "dtype": str(dtype).removeprefix("torch.")})
    with fsspec.open(dst, "wb") as f:
        f.write(data)
    record: dict = {}
    src_sidecar = src.rsplit(".", 1)[0] + ".json"
    fs, path = fsspec.core.url_to_fs(src_sidecar)
    if fs.exists(path):
        record = json.loads(fs.cat_file(path))
    record.update({"file": dst.rsplit("/", 1)[-1], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                   "dtype": str(dtype).removeprefix("torch."), "source": src, **(extra or {})})
    with fsspec.open(dst.rsplit(".", 1)[0] + ".json", "w") as f:
        json.dump(record, f, indent=2, default=str)
        f.write("\n")
    return record


def _deployed(src: str, state_dict: dict, metadata: dict) -> tuple[dict, dict]:
    from pipeline.models import NATIVE_ARCHS
    from pipeline.models.weights import metadata_hints

    for arch in NATIVE_ARCHS:
        config = arch.detect(state_dict, metadata_hints(metadata))
        if config is not None:
            deployed = arch.deploy(state_dict)
            config = arch.detect(deployed, metadata_hints(metadata))
            return deployed, {**metadata, "config": json.dumps(config)}
    raise ValueError(f"{src}: not a native architecture; nothing to deploy")


def _note(text: str) -> tuple[str, object]:
    """--note KEY=VALUE, parsed as the CLI's --storage-option is (pipeline.store.parse_key_value)."""
    try:
        return parse_key_value(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export trained weights for shipping (optionally fp16).")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--fp16", action="store_true", help="store floating tensors as float16")
    parser.add_argument("--deploy", action="store_true",
                        help="store the smallest layout computing the same output (SPAN: folded convs only)")
    parser.add_argument("--note", action="append", default=[], type=_note, metavar="KEY=JSON",
                        help="extra sidecar entry (the value as JSON where it parses, else as text)")
    args = parser.parse_args(argv)
    extra = dict(args.note)
    record = export_weights(args.src, args.dst, dtype=torch.float16 if args.fp16 else torch.float32, extra=extra,
                            deploy=args.deploy)
    print(json.dumps({k: record[k] for k in ("file", "sha256", "bytes", "dtype")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
