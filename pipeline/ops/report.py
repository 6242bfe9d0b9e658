"""`upscaler report DST`: a static HTML page under DST/_report/ for one run.

Summary, distributions (inline SVG: the page needs no network and no
JavaScript library), the failures with their errors, and before/after crops
(input enlarged with nearest neighbour beside the output) for a sample of
images and for the worst ones by lr_psnr. Nothing identifying beyond the
image keys is shown; storage options were never recorded.
"""

from __future__ import annotations

import html
import io
import json
import math
import posixpath
import random

import numpy as np
from PIL import Image

from pipeline import formats, store
from pipeline.store import manifest

CROP = 160  # output pixels per side of a before/after crop


def _histogram_svg(values: list[float], title: str, unit: str, bins: int = 20) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return f'<figure><figcaption>{html.escape(title)}: no values</figcaption></figure>'
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    top, w, h = max(counts), 360, 120
    bars = "".join(
        f'<rect x="{i * w / bins:.1f}" y="{h - c / top * h:.1f}" width="{w / bins - 1:.1f}" '
        f'height="{c / top * h:.1f}"><title>{lo + i * width:.3g} to {lo + (i + 1) * width:.3g}: {c}</title></rect>'
        for i, c in enumerate(counts))
    return (f'<figure><svg viewBox="0 0 {w} {h + 16}" width="{w}" height="{h + 16}" role="img">'
            f'<g class="bars">{bars}</g><text x="0" y="{h + 14}">{lo:.3g}</text>'
            f'<text x="{w}" y="{h + 14}" text-anchor="end">{hi:.3g} {html.escape(unit)}</text></svg>'
            f'<figcaption>{html.escape(title)} (n={len(values)}, median {float(np.median(values)):.3g} {html.escape(unit)})'
            f'</figcaption></figure>')


def _crop_pair(row: dict, storage_options: dict | None) -> bytes | None:
    """Input (nearest-neighbour enlarged) beside the output, centre crop, as PNG."""
    try:
        before = formats.decode_image(store.read_bytes(row["src_uri"], storage_options)).pixels
        after = formats.decode_image(store.read_bytes(row["dst_uri"], storage_options)).pixels
    except Exception:
        return None
    def to8(a: np.ndarray) -> np.ndarray:
        a = a[..., :3] if a.shape[2] >= 3 else np.repeat(a[..., :1], 3, axis=2)
        if a.dtype == np.uint8:
            return a
        a = a.astype(np.float64)
        return np.clip((a - a.min()) / max(1e-12, a.max() - a.min()) * 255, 0, 255).astype(np.uint8)
    before, after = to8(before), to8(after)
    sy, sx = after.shape[0] / before.shape[0], after.shape[1] / before.shape[1]
    size = min(CROP, after.shape[0], after.shape[1])
    y0, x0 = (after.shape[0] - size) // 2, (after.shape[1] - size) // 2
    yy = np.minimum((np.arange(y0, y0 + size) / sy).astype(int), before.shape[0] - 1)
    xx = np.minimum((np.arange(x0, x0 + size) / sx).astype(int), before.shape[1] - 1)
    pair = np.concatenate([before[yy][:, xx], np.full((size, 4, 3), 255, np.uint8),
                           after[y0:y0 + size, x0:x0 + size]], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(pair).save(buffer, format="PNG")
    return buffer.getvalue()


def write_report(dst: str, run_id: str | None = None, storage_options: dict | None = None,
                 samples: int = 6, worst: int = 6) -> str:
    """Write DST/_report/<run_id>/index.html (and its crops); returns its URI."""
    fs, root = store.open_location(dst, storage_options)
    table = manifest.read_manifest(fs, root)
    if table.num_rows == 0:
        raise FileNotFoundError(f"no manifest rows under {dst}")
    rows = table.to_pylist()
    run_ids = sorted({str(r["run_id"]) for r in rows})
    run_id = run_id or run_ids[-1]
    rows = [r for r in rows if str(r["run_id"]) == run_id]
    if not rows:
        raise FileNotFoundError(f"run {run_id} not found under {dst} (runs: {', '.join(run_ids)})")
    out_dir = posixpath.join(root, "_report", run_id)
    fs.makedirs(posixpath.join(out_dir, "crops"), exist_ok=True)
    try:
        with fs.open(posixpath.join(manifest.manifest_dir(root), "_runs", f"{run_id}.json"), "r") as f:
            record = json.load(f)
    except FileNotFoundError:
        record = {}

    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    per_mpx = [r["seconds_total"] / max(1e-9, (r["out_width"] or 0) * (r["out_height"] or 0) / 1e6) for r in ok]
    figures = [_histogram_svg([r["lr_psnr"] for r in ok], "lr_psnr (output downscaled vs input)", "dB"),
               _histogram_svg(per_mpx, "seconds per output megapixel", "s/Mpx")]
    if any(r.get("psnr") is not None for r in ok):
        figures.append(_histogram_svg([r["psnr"] for r in ok], "PSNR against the reference", "dB"))
        figures.append(_histogram_svg([r["ssim"] for r in ok], "SSIM against the reference", ""))

    scored = sorted((r for r in ok if r["lr_psnr"] is not None), key=lambda r: r["lr_psnr"])
    chosen = [("worst lr_psnr", r) for r in scored[:worst]]
    rest = [r for r in ok if r not in scored[:worst]]
    chosen += [("sample", r) for r in random.Random(0).sample(rest, min(samples, len(rest)))]
    cards = []
    for index, (why, row) in enumerate(chosen):
        data = _crop_pair(row, storage_options)
        if data is None:
            continue
        name = f"crops/{index:03d}.png"
        fs.pipe_file(posixpath.join(out_dir, name), data)
        cards.append(f'<figure class="crop"><img src="{name}" alt="before and after: {html.escape(row["image_id"])}">'
                     f'<figcaption>{html.escape(why)}: {html.escape(row["image_id"])}, lr_psnr '
                     f'{row["lr_psnr"]:.2f} dB, {row["width"]}x{row["height"]} &rarr; '
                     f'{row["out_width"]}x{row["out_height"]}</figcaption></figure>')
    failure_rows = "".join(
        f"<tr><td>{html.escape(r['image_id'])}</td><td>{html.escape(r['error_type'] or '')}</td>"
        f"<td>{html.escape(r['error'] or '')}</td></tr>" for r in failed)
    summary = [("run", run_id), ("ok", len(ok)), ("failed", len(failed)),
               ("model", record.get("model", {}).get("name", ok[0]["model"] if ok else "")),
               ("executor", record.get("executor", "")), ("seconds", _seconds(record.get("seconds"))),
               ("megapixels out", f"{sum((r['out_width'] or 0) * (r['out_height'] or 0) for r in ok) / 1e6:.2f}")]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>upscaler run {html.escape(run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; }}
.bars rect {{ fill: #4a78b5; }} figure {{ display: inline-block; margin: 0 1.5rem 1.5rem 0; vertical-align: top; }}
.crop img {{ image-rendering: pixelated; border: 1px solid #ccc; }}
</style></head>
<body>
<h1>upscaler run {html.escape(run_id)}</h1>
<table>{"".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary)}</table>
<h2>Distributions</h2>
{"".join(figures)}
<h2>Failures ({len(failed)})</h2>
<table><tr><th>image</th><th>error type</th><th>error</th></tr>{failure_rows}</table>
<h2>Before / after (input enlarged with nearest neighbour, left; output, right)</h2>
{"".join(cards)}
<script>
window.addEventListener("load", () => {{
  const images = [...document.images];
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesTotal = images.length;
}});
</script>
</body></html>
"""
    path = posixpath.join(out_dir, "index.html")
    fs.pipe_file(path, page.encode())
    return store.full_uri(fs, path)


def _seconds(value) -> str:
    """A run's duration as people read it: 11.1, 3 min 05 s, 2 h 04 min."""
    if value is None or value == "":
        return ""
    value = float(value)
    if value < 60:
        return f"{value:.1f}"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"
