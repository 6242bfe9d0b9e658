"""What several subcommands share: option groups, the RunSpec built from them, and
the printing of a plan and of a run's summary (and `_execute`/`_summary`, which run
a spec on the chosen executor). Heavy imports stay inside the functions: building
the parser must not import torch."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_STORAGE


def _positive_scale(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("scale must be positive")
    return value


def _storage_option(text: str) -> tuple[str, object]:
    """KEY=VALUE through `pipeline.store.parse_key_value` (one parser for the CLI and
    the trainer). A malformed one is an ArgumentTypeError whose message leaves the
    text out: for a ValueError argparse would print "invalid _storage_option value:
    'secret=...'", and the text may be a credential."""
    from pipeline.store import parse_key_value  # imported on use: the parser is built on every start

    try:
        return parse_key_value(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error} (the text is not shown: it may hold a secret)") from None


def add_storage_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, **extra) -> None:
    """--storage-option KEY=VALUE (repeatable), as every command that opens storage takes it."""
    p.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE",
                   **extra)


def add_engine_options(p: argparse.ArgumentParser, scale: bool = True) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", default=None, help="named model, local path or fsspec URL (default: the bundled model for the "
                   "scale: edsr-x4, or edsr-x2 up to x2; bicubic at x1 or below)")
    if scale:
        g.add_argument("--scale", type=_positive_scale, default=None,
                       help="output scale; may differ from the model's (x3 from x4, x8 in two passes, 2.5)")
    g.add_argument("--tile", type=int, default=None, help="tile size in input pixels; 0 = whole image; default: from the memory budget")
    g.add_argument("--overlap", type=int, default=None, help="tile overlap in input pixels (default: the model's)")
    g.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default: joins --address / RAY_ADDRESS, else starts a local Ray) or local (in this process, no Ray)")
    g.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    g.add_argument("--workers", type=int, default=None, help="model-holding actors (default: one per GPU, else CPUs // 2)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="default 1 where GPUs exist, else 0")
    g.add_argument("--cpus-per-worker", type=float, default=None)
    g.add_argument("--batch-size", type=int, default=4, help="images per batch: their tiles share forward passes")
    add_storage_option(g, help="passed to the filesystem (e.g. endpoint_url=http://127.0.0.1:9000); never recorded")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress bar on stderr (default: when stderr is a terminal)")


def add_run_options(run: argparse.ArgumentParser) -> None:
    """What a run does (shared by `run` and `plan`)."""
    run.add_argument("src", help="source prefix, object or local folder (fsspec URL or path)")
    run.add_argument("dst", help="destination prefix (fsspec URL or path)")
    add_engine_options(run)
    run.add_argument("--format", choices=("png", "tiff", "jpeg", "webp"), default=None,
                     help="output format (default: the input's; GIF becomes PNG)")
    run.add_argument("--keep-extension", action="store_true",
                     help="name outputs after the whole source name (photo.gif -> photo.gif.png), so sources of one "
                          "stem never share an output (without it, such sources are refused, each naming the other)")
    run.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (WebP: 100 = lossless)")
    run.add_argument("--compress-level", type=int, choices=range(10), default=1, metavar="0-9",
                     help="zlib level for PNG and TIFF (default 1: fast; 6 is about 10%% smaller and 4x slower)")
    run.add_argument("--reference", default=None, help="folder of high-resolution references for PSNR/SSIM/LPIPS")
    run.add_argument("--include", action="append", default=[], help="glob on the relative key (repeatable)")
    run.add_argument("--exclude", action="append", default=[], help="glob on the relative key (repeatable)")
    run.add_argument("--max-pixels", type=int, default=None, help="refuse inputs with more pixels (decompression-bomb guard)")
    run.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                     help="per-image time limit, checked between tiles: a slower image gets a failed row")
    run.add_argument("--storage-failures", type=int, default=5, metavar="N",
                     help="after N images in a row fail on storage (each after its retries), do not attempt the "
                          "rest: they get failed rows for `upscaler rerun` (0: never give up)")
    run.add_argument("--from-list", default=None, help="text (one URL or key per line) or Parquet list of images under SRC")
    run.add_argument("--force", action="store_true", help="reprocess images an earlier run already did")
    run.add_argument("--run-id", default=None)
    run.add_argument("--include-quarantined", action="store_true",
                     help="also retry images that failed the same deterministic way in earlier runs")
    run.add_argument("--band-mode", choices=("rgb+gray", "each"), default="rgb+gray",
                     help="rasters: 'rgb+gray' runs the Red/Green/Blue bands (GDAL COLORINTERP, else the first three) "
                          "through the model together and every other band alone through the gray path; 'each' runs every band alone")
    run.add_argument("--radiometric", choices=("auto", "minmax", "dtype"), default="auto",
                     help="rasters: mapping to the model's [0, 1]: 'minmax' (valid data range, shared by the RGB triplet), "
                          "'dtype' (the sample type's full range), 'auto' (dtype for uint8, else minmax); recorded in the manifest")
    run.add_argument("--stream-threshold", type=int, default=4096 * 4096, metavar="PIXELS",
                     help="TIFFs with more pixels are read, upscaled and written window by window into a tiled (Big)TIFF, "
                          "memory bound by the window (default 16777216 = 4096 x 4096; 0: never)")
    run.add_argument("--limit", type=int, default=None, help="pilot run: the first N images to do")
    run.add_argument("--sample", type=int, default=None, help="pilot run: a random N of the images to do")


def config_from_args(args):
    from pipeline import formats
    from pipeline.spec import RunSpec

    return RunSpec(
        src=args.src, dst=args.dst, model=args.model, scale=args.scale,
        tile=args.tile, overlap=args.overlap, precision=args.precision, format=args.format,
        quality=args.quality, compress_level=args.compress_level, reference=args.reference, include=tuple(args.include),
        exclude=tuple(args.exclude), max_pixels=args.max_pixels or formats.DEFAULT_MAX_PIXELS,
        batch_images=max(1, getattr(args, "batch_size", 4)), device=args.device, run_id=args.run_id,
        force=args.force, from_list=args.from_list, storage_options=dict(args.storage_option),
        include_quarantined=args.include_quarantined, limit=args.limit, sample=args.sample,
        band_mode=args.band_mode, radiometric=args.radiometric, stream_threshold=args.stream_threshold,
        time_limit=args.time_limit, storage_failures=args.storage_failures, keep_extension=args.keep_extension,
    )


def _print_plan(planned: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(planned, indent=2))
        return
    for name, value in planned.items():
        print(f"{name:<26} {value}")


def _execute(config, args) -> int:
    summary = _summary(config, args)
    if getattr(args, "gpu_hour_price", None) is not None:
        summary["cost"] = round(summary["device_seconds"] / 3600 * args.gpu_hour_price, 6)
    return _report(summary, args)


def _summary(config, args) -> dict:
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    if args.executor == "local":
        from pipeline.job.local import run_local

        return run_local(config, progress=args.progress)
    from pipeline.job.ray import RayOptions, run_ray

    options = RayOptions(address=args.address, workers=args.workers,
                         cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker)
    return run_ray(config, options, progress=args.progress)


def _report(summary: dict, args) -> int:
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        seconds = summary["seconds"]
        rows = [("run", summary["run_id"]), ("ok", summary["ok"]), ("failed", summary["failed"]),
                ("skipped", summary["skipped"]),
                ("megapixels in / out", f"{summary['megapixels_in']:.2f} / {summary['megapixels_out']:.2f}"),
                ("seconds", f"{seconds:.1f} ({summary['megapixels_out'] / max(seconds, 1e-9):.2f} Mpx/s out)"),
                ("manifest", summary["manifest"])]
        for name, value in rows:
            print(f"{name:<20} {value}")
        for failure in summary["failures"]:
            print(f"  failed {failure['image_id']}: {failure['error_type']}: {failure['error']}", file=sys.stderr)
    if summary.get("storage_error"):
        spooled = summary["spooled"]
        print(f"upscaler: error: the destination's storage stayed unreachable: {summary['storage_error']}\n"
              f"  {spooled['files']} manifest file(s) kept in {spooled['folder']}; once storage is back, "
              f"`upscaler rerun DST` uploads them and redoes the images that did not finish.", file=sys.stderr)
        return EXIT_STORAGE
    return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK
