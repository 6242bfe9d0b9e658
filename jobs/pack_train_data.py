"""Pack training folders as lossless WebP under a byte budget, for a machine that gets
only what travels with the working tree (the lent GPU: 64 MiB in all).

    python jobs/pack_train_data.py DEST --budget-mb 60 ../shared/data/kodak ../shared/data/urban-train ...

Folders are taken in the order given, each image decoded and re-encoded without loss
(the same pixels: checked), until the next image would pass the budget; the rest is left out. Prints JSON:
images and bytes per folder, and what was left out.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = {".png", ".webp", ".bmp", ".tif", ".tiff"}


def name(folder: Path) -> str:
    """set5/HR -> set5: benchmark sets keep their HR images in a folder of that name."""
    return folder.parent.name if folder.name == "HR" else folder.name


def pack(dest: Path, folders: list[Path], budget: int) -> dict:
    used, report, full = 0, {}, False
    for folder in folders:  # every folder exists in dest, even one left empty by the budget
        (dest / name(folder)).mkdir(parents=True, exist_ok=True)
    for folder in folders:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
        kept = 0
        for path in paths:
            pixels = np.asarray(Image.open(path).convert("RGB"))
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="WEBP", lossless=True, quality=100, method=4)
            data = buffer.getvalue()
            if used + len(data) > budget:
                full = True
                break
            if not np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), pixels):
                raise RuntimeError(f"{path}: lossless WebP changed the pixels")
            target = dest / name(folder) / path.relative_to(folder).with_suffix(".webp")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            used, kept = used + len(data), kept + 1
        report[name(folder)] = {"images": kept, "left_out": len(paths) - kept}
        if full:
            break
    return {"bytes": used, "folders": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--budget-mb", type=float, default=60)
    args = parser.parse_args(argv)
    print(json.dumps(pack(args.dest, args.folders, int(args.budget_mb * 2**20)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
