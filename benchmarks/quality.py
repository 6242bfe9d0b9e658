"""Quality table: bicubic and every bundled model on Set5 and Set14 at their
scales, PSNR-Y and SSIM-Y by the paper protocol (`pipeline.ops.evaluate.evaluate`:
HR cropped to a multiple of the scale, LR by MATLAB bicubic, Y channel,
`scale` border pixels shaved), beside the published figures from
../shared/README.md.

    python benchmarks/quality.py [--json quality.json] [--markdown quality.md] [--models edsr-x4 ...]

Writes JSON and Markdown (to the given files, and the Markdown to stdout).
Needs ../shared/data/set5 and set14.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from pipeline.ops.evaluate import evaluate
from pipeline.models import NAMED_MODELS, load_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SETS = {"Set5": SHARED / "data" / "set5" / "HR", "Set14": SHARED / "data" / "set14" / "HR"}

# Published PSNR-Y (dB): ../shared/README.md and issue 16 (models of about our size, DIV2K-trained
# unless said): (method, scale) -> {set: psnr}
PUBLISHED = {
    ("bicubic (published)", 4): {"Set5": 28.42, "Set14": 26.00},
    ("SRCNN (published)", 4): {"Set5": 30.48},
    ("ESPCN (published)", 4): {"Set5": 30.90},
    ("VDSR (published, 0.67 M, 291 images)", 4): {"Set5": 31.35, "Set14": 28.01},
    ("EDSR-baseline (published, 1.5 M)", 4): {"Set5": 32.09, "Set14": 28.58},
    ("IMDN (published, 0.72 M)", 4): {"Set5": 32.21, "Set14": 28.58},
    ("RLFN (published, 0.54 M)", 4): {"Set5": 32.24, "Set14": 28.62},
    ("SwinIR-light (published, 0.90 M)", 4): {"Set5": 32.44, "Set14": 28.77},
    ("EDSR (published, 43 M params)", 4): {"Set5": 32.46, "Set14": 28.80},
    ("bicubic (published)", 2): {"Set5": 33.66, "Set14": 30.24},
    ("EDSR-baseline (published, 1.4 M)", 2): {"Set5": 37.99},
    ("RLFN (published, 0.53 M)", 2): {"Set5": 38.07},
}


def bundled_models() -> list[str]:
    return [name for name, m in NAMED_MODELS.items() if m.weights]


def measure(models: list[str], device: str = "cpu") -> list[dict]:
    rows = []
    scales = sorted({load_model(m).scale for m in models} | {2, 4}, reverse=True)
    for scale in scales:
        for model in ["bicubic", *[m for m in models if load_model(m).scale == scale]]:
            loaded = load_model(model, scale=scale)
            label = model if model in NAMED_MODELS else f"{Path(model).stem} (file)"
            row = {"model": label, "scale": scale, "params": loaded.params}
            for set_name, path in SETS.items():
                t0 = time.perf_counter()
                result = evaluate(str(path), scale, model, device=device, precision="fp32")
                row[set_name] = {"psnr_y": round(result["mean"]["psnr"], 3), "ssim_y": round(result["mean"]["ssim"], 4),
                                 "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | scale | params | Set5 PSNR-Y | Set5 SSIM-Y | Set14 PSNR-Y | Set14 SSIM-Y |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for scale in sorted({r["scale"] for r in rows}, reverse=True):
        for r in (r for r in rows if r["scale"] == scale):
            params = f"{r['params'] / 1e6:.2f} M" if r["params"] else "-"
            lines.append(f"| {r['model']} | x{scale} | {params} | {r['Set5']['psnr_y']:.2f} | {r['Set5']['ssim_y']:.4f} "
                         f"| {r['Set14']['psnr_y']:.2f} | {r['Set14']['ssim_y']:.4f} |")
        for (name, s), figures in PUBLISHED.items():
            if s == scale:
                cells = [f"{figures[k]:.2f}" if k in figures else "—" for k in ("Set5", "Set14")]
                lines.append(f"| {name} | x{scale} | | {cells[0]} | | {cells[1]} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="named models or weight files (default: every bundled model)")
    parser.add_argument("--sets", help="folder holding set5 and set14 (each with or without HR/); default ../shared/data")
    parser.add_argument("--device", default="cpu", help="where to compute (fp32 either way)")
    parser.add_argument("--json", help="write the JSON table here")
    parser.add_argument("--markdown", help="write the Markdown table here")
    args = parser.parse_args(argv)
    if args.sets:
        root = Path(args.sets)
        for name in list(SETS):
            folder = root / name.lower()
            SETS[name] = folder / "HR" if (folder / "HR").is_dir() else folder
    missing = [str(p) for p in SETS.values() if not p.is_dir()]
    if missing:
        print(f"quality benchmark needs {', '.join(missing)} (../shared is absent)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = measure(args.models if args.models is not None else bundled_models(), args.device)
    table = markdown(rows)
    record = {"protocol": "paper: Y channel (BT.601), shave=scale, HR cropped to a multiple of the scale, "
                          f"LR by MATLAB-compatible bicubic; fp32 on {args.device}",
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "rows": rows, "published": [{"model": n, "scale": s, **f} for (n, s), f in PUBLISHED.items()]}
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
