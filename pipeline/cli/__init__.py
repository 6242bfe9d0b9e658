"""`upscaler`: the command line. Exit codes: 0 all succeeded, 3 some images
failed, 2 usage error (bad arguments, missing source, unloadable model)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_STORAGE = 0, 2, 3, 4


def _positive_scale(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("scale must be positive")
    return value


def _storage_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    try:
        return key, json.loads(value)  # numbers, booleans, JSON objects
    except ValueError:
        return key, value


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
    g.add_argument("--storage-option", action="append", type=_storage_option, default=[],
                   metavar="KEY=VALUE", help="passed to the filesystem (e.g. endpoint_url=http://127.0.0.1:9000); never recorded")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upscaler", description="Batch super-resolution for image archives.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="upscale every image under SRC into DST, with a Parquet manifest")
    add_run_options(run)
    run.add_argument("--max-cost", type=float, default=None, metavar="USD",
                     help="refuse to start (exit 2, nothing written) when the estimate exceeds this; needs --gpu-hour-price")
    run.add_argument("--gpu-hour-price", type=float, default=None, metavar="USD")
    add_executor_options(run)

    plan = sub.add_parser("plan", help="what a run would do and cost; runs nothing")
    add_run_options(plan)
    plan.add_argument("--gpu-hour-price", type=float, default=None, metavar="USD")
    plan.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")
    plan.add_argument("--json", action="store_true")

    cal = sub.add_parser("calibrate", help="measure a model's megapixels/s on this device for `plan`")
    cal.add_argument("--model", default=None)
    cal.add_argument("--device", default="auto")
    cal.add_argument("--tile", type=int, default=None)
    cal.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto")
    cal.add_argument("--seconds", type=float, default=10.0, help="how long to measure")
    cal.add_argument("--json", action="store_true")

    submit = sub.add_parser("submit", help="submit `upscaler run` as a Ray job (Job Submission API); prints the job id")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it succeeded")
    submit.add_argument("run_args", nargs=argparse.REMAINDER, metavar="SRC DST [run options]")

    report = sub.add_parser("report", help="write a static HTML report of a run under DST/_report/")
    report.add_argument("dst")
    report.add_argument("--run-id", default=None, help="default: the latest run")
    report.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")

    runs = sub.add_parser("runs", help="list the runs recorded under DST")
    runs.add_argument("dst")
    runs.add_argument("--gpu-hour-price", type=float, default=None, metavar="USD")
    runs.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE")
    runs.add_argument("--json", action="store_true")

    ev = sub.add_parser("eval", help="PSNR/SSIM on a benchmark set with the paper protocol")
    ev.add_argument("--hr", required=True, help="folder of high-resolution images")
    ev.add_argument("--scale", type=int, required=True)
    ev.add_argument("--lr", default=None, help="folder of LR images (default: MATLAB bicubic of the HR)")
    add_engine_options(ev, scale=False)
    ev.add_argument("--json", action="store_true")

    rerun = sub.add_parser("rerun", help="redo the images whose latest row failed or whose output vanished")
    rerun.add_argument("dst", help="the destination of the earlier runs")
    rerun.add_argument("--dry-run", action="store_true", help="the plan for what would be redone; runs nothing")
    rerun.add_argument("--gpu-hour-price", type=float, default=None, metavar="USD")
    add_executor_options(rerun)

    demo = sub.add_parser("demo", help="write sample images (offline) and upscale them with the default model")
    demo.add_argument("dir", nargs="?", default="upscaler-demo", help="writes DIR/samples and DIR/upscaled")
    demo.add_argument("--model", default=None)
    demo.add_argument("--executor", choices=("ray", "local"), default="ray")
    demo.add_argument("--json", action="store_true")

    train = sub.add_parser("train", help="train a model (weighted L1/L2, perceptual, adversarial, TV losses; Ray Train)")
    from pipeline.train import add_train_arguments

    add_train_arguments(train)

    models = sub.add_parser("models", help="list the named models")
    models.add_argument("--json", action="store_true")
    return parser


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


def cmd_run(args) -> int:
    config = config_from_args(args)
    if args.max_cost is not None:
        from pipeline.ops.plan import estimate

        if args.gpu_hour_price is None:
            raise ValueError("--max-cost needs --gpu-hour-price to turn device-seconds into money")
        planned = estimate(config, gpu_hour_price=args.gpu_hour_price, include_quarantined=args.include_quarantined)
        if planned.estimated_cost > args.max_cost:
            raise ValueError(f"estimated cost {planned.estimated_cost:.2f} USD exceeds --max-cost {args.max_cost:.2f} "
                             f"({planned.todo} images, {planned.megapixels_out:.1f} output Mpx, "
                             f"{planned.estimated_device_seconds:.0f} device-s at {planned.mpx_per_second} Mpx/s, "
                             f"{planned.throughput_source}); nothing was written")
    return _execute(config, args)


def cmd_plan(args) -> int:
    from pipeline.ops.plan import estimate

    planned = estimate(config_from_args(args), gpu_hour_price=args.gpu_hour_price,
                       include_quarantined=args.include_quarantined).as_dict()
    _print_plan(planned, args.json)
    return EXIT_OK


def _print_plan(planned: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(planned, indent=2))
        return
    for name, value in planned.items():
        print(f"{name:<26} {value}")


def cmd_calibrate(args) -> int:
    from pipeline.ops.plan import calibrate
    from pipeline.models import default_model

    result = calibrate(args.model or default_model(None), device=args.device, tile=args.tile,
                       precision=args.precision, seconds=args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} on {result['device']}: {result['mpx_per_second']} output Mpx/s "
              f"(tile {result['tile']}, {result['precision']}); stored in {result['cache']}")
    return EXIT_OK


CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")


def cmd_submit(args) -> int:
    """Validate the run options here, then hand `python jobs/upscale.py ...` to the cluster."""
    import shlex

    run_args = [a for a in args.run_args if a != "--"]
    parsed = build_parser().parse_args(["run", *run_args])  # a usage error exits 2 before anything is sent
    for key, _ in parsed.storage_option:
        if any(word in key.lower() for word in CREDENTIAL_WORDS):
            raise ValueError(f"--storage-option {key}=... looks like a credential; the entrypoint is visible to "
                             "anyone who can list jobs: give it to the cluster's environment instead")
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(args.address)
    runtime_env = {"working_dir": args.working_dir,
                   "excludes": [".venv", ".git", "*.egg-info", "__pycache__", "upscaler-demo"]}
    job_id = client.submit_job(entrypoint="python jobs/upscale.py " + shlex.join(run_args), runtime_env=runtime_env)
    print(job_id)
    if not args.wait:
        return EXIT_OK
    import time

    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(1)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return EXIT_OK if status == JobStatus.SUCCEEDED else EXIT_SOME_FAILED


def cmd_report(args) -> int:
    from pipeline.ops.report import write_report

    print(write_report(args.dst, args.run_id, dict(args.storage_option)))
    return EXIT_OK


def cmd_runs(args) -> int:
    from pipeline.ops.runs import list_runs

    rows = list_runs(args.dst, dict(args.storage_option), gpu_hour_price=args.gpu_hour_price)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    print(f"{'run_id':<26}{'ok':>7}{'failed':>7}{'skipped':>8}{'seconds':>9}{'Mpx out':>9}{'device-s':>10}{'cost':>9}")
    for r in rows:
        cost = "" if r["cost"] is None else f"{r['cost']:.4f}"
        print(f"{r['run_id']:<26}{r['ok']:>7}{r['failed']:>7}{r['skipped']:>8}{r['seconds']:>9.1f}"
              f"{r['megapixels_out']:>9.2f}{r['device_seconds']:>10.1f}{cost:>9}")
    return EXIT_OK


def _execute(config, args) -> int:
    summary = _summary(config, args)
    if getattr(args, "gpu_hour_price", None) is not None:
        summary["cost"] = round(summary["device_seconds"] / 3600 * args.gpu_hour_price, 6)
    return _report(summary, args)


def _summary(config, args) -> dict:
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    if args.executor == "local":
        from pipeline.run.local import run_local

        return run_local(config, progress=args.progress)
    from pipeline.run.ray import RayOptions, run_ray

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


def cmd_eval(args) -> int:
    from pipeline.ops.evaluate import evaluate
    from pipeline.models import default_model

    result = evaluate(args.hr, args.scale, args.model or default_model(args.scale), lr=args.lr,
                      device=args.device, precision=args.precision, tile=args.tile, overlap=args.overlap)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for image in result["images"]:
            print(f"{image['image']:<24} PSNR {image['psnr']:6.2f} dB  SSIM {image['ssim']:.4f}")
        print(f"{'mean':<24} PSNR {result['mean']['psnr']:6.2f} dB  SSIM {result['mean']['ssim']:.4f}"
              f"  ({result['model']}, x{result['scale']}, {result['protocol']})")
    return EXIT_OK


def cmd_rerun(args) -> int:
    from pipeline.ops.rerun import plan_rerun

    if not args.dry_run:  # rows an earlier run spooled while storage was down count too
        from pipeline import store
        from pipeline.run.recovery import recover

        recover(*store.open_location(args.dst, dict(args.storage_option)))
    groups = plan_rerun(args.dst, dict(args.storage_option))
    failed, missing = sum(g.failed for g in groups), sum(g.missing for g in groups)
    resumed = sum(g.interrupted for g in groups)
    print(f"rerun: {failed + missing} images ({failed} failed, {missing} outputs missing) "
          f"from {len(groups)} earlier run(s)" + (f"; {resumed} interrupted run(s) resumed" if resumed else ""),
          file=sys.stderr)
    if args.dry_run:
        from pipeline.ops.plan import estimate

        plans = [estimate(g.config, gpu_hour_price=args.gpu_hour_price).as_dict() for g in groups]
        result = {"todo": failed + missing, "failed": failed, "missing": missing, "runs": len(groups)}
        for key in ("megapixels_in", "megapixels_out", "estimated_device_seconds"):
            result[key] = round(sum(p[key] for p in plans), 6)
        prices = [p["estimated_cost"] for p in plans]
        result["estimated_cost"] = round(sum(prices), 6) if prices and None not in prices else None
        _print_plan(result, args.json)
        return EXIT_OK
    summaries = []
    for group in groups:
        group.config.batch_images = max(1, args.batch_size)
        summaries.append(_summary(group.config, args))
    total = {"run_id": ",".join(s["run_id"] for s in summaries), "failures": [], "manifest": None}
    for key in ("ok", "failed", "skipped", "total", "seconds", "megapixels_in", "megapixels_out", "device_seconds"):
        total[key] = sum(s[key] for s in summaries)
    for s in summaries:
        total["failures"] += s["failures"]
        total["manifest"] = s["manifest"]
        if s.get("storage_error"):
            total.update(storage_error=s["storage_error"], spooled=s["spooled"])
    total.update(rerun_failed=failed, rerun_missing=missing)
    return _report(total, args)


def cmd_demo(args) -> int:
    import posixpath

    from pipeline.ops.samples import write_samples

    root = args.dir.rstrip("/")
    written = write_samples(posixpath.join(root, "samples"))
    print(f"wrote {len(written)} sample images under {root}/samples", file=sys.stderr)
    run_args = build_parser().parse_args(
        ["run", posixpath.join(root, "samples"), posixpath.join(root, "upscaled"), "--executor", args.executor]
        + (["--model", args.model] if args.model else []) + (["--json"] if args.json else [])
    )
    return cmd_run(run_args)


def cmd_train(args) -> int:
    from pipeline.train import run_train

    return run_train(args)


def cmd_models(args) -> int:
    from pipeline.models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'name':<22}{'arch':<12}{'scale':<7}{'params':>10}  weights")
    for r in rows:
        print(f"{r['name']:<22}{r['arch']:<12}{str(r['scale']):<7}{r['params']:>10}  {r['weights']}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from pipeline.models import ModelLoadError
    from pipeline.run.local import RunInterrupted

    try:
        return {"run": cmd_run, "eval": cmd_eval, "models": cmd_models, "demo": cmd_demo,
                "rerun": cmd_rerun, "train": cmd_train, "plan": cmd_plan,
                "calibrate": cmd_calibrate, "runs": cmd_runs, "submit": cmd_submit,
                "report": cmd_report}[args.command](args)
    except RunInterrupted as stop:
        summary = stop.summary
        print(f"upscaler {args.command}: interrupted ({stop.signal_name}) after {summary['ok']} ok and "
              f"{summary['failed']} failed images; their rows are in {summary['manifest']}.\n"
              f"  Run the same command again (or `upscaler rerun DST`) to finish: what is done is skipped.",
              file=sys.stderr)
        return stop.exit_status
    except (ModelLoadError, FileNotFoundError, ValueError) as error:
        print(f"upscaler {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        from pipeline.store import is_storage_error

        if not is_storage_error(error):
            raise
        print(f"upscaler {args.command}: error: storage unreachable: {type(error).__name__}: {error}\n"
              f"  run the same command again once storage is back: what is already done is skipped.",
              file=sys.stderr)
        return EXIT_STORAGE


if __name__ == "__main__":
    sys.exit(main())
