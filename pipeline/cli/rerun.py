"""`upscaler rerun DST`: redo the images whose latest row failed or whose output vanished."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import EXIT_OK
from pipeline.cli.options import (EXIT_EMPTY, _print_plan, _report, _summary, add_engine_options, add_executor_options,
                                  add_output_options, add_price_option, no_manifest)


def add_parser(subparsers) -> argparse.ArgumentParser:
    rerun = subparsers.add_parser(
        "rerun", help="redo the images whose latest row failed or whose output vanished",
        epilog="exit status: 0 all redone, or nothing to redo; 3 some images failed again; 4 storage unreachable; "
               "6 no manifest under DST (nothing was ever run there: a mistyped DST, most likely)")
    rerun.add_argument("dst", help="the destination of the earlier runs")
    rerun.add_argument("--dry-run", action="store_true", help="the plan for what would be redone; runs nothing")
    add_engine_options(rerun, override=True)
    add_output_options(rerun, override=True)
    rerun.add_argument("--include-quarantined", action="store_true",
                       help="also redo images that failed the same deterministic way in earlier runs (default: "
                            "left out, as `run` leaves them out)")
    add_price_option(rerun)
    add_executor_options(rerun)
    return rerun


def command(args) -> int:
    from pipeline.ops.rerun import OVERRIDABLE, plan_rerun, quarantined_total

    if not args.dry_run:  # rows an earlier run spooled while storage was down count too
        from pipeline import store
        from pipeline.job.recovery import recover

        recover(*store.open_location(args.dst, dict(args.storage_option)))
    if no_manifest("rerun", args.dst, dict(args.storage_option)):
        return EXIT_EMPTY
    overrides = {name: getattr(args, name) for name in OVERRIDABLE if hasattr(args, name)}  # given ones only
    groups = plan_rerun(args.dst, dict(args.storage_option), overrides, include_quarantined=args.include_quarantined)
    _say_changed(groups)
    held = 0 if args.include_quarantined else quarantined_total(args.dst, dict(args.storage_option))
    left_out = (f"{held} quarantined image(s) left out (failed the same deterministic way repeatedly on unchanged "
                f"bytes); --include-quarantined redoes them")
    if not groups:  # a success, not an error: nothing failed or vanished (or only quarantined images did)
        print("upscaler rerun: nothing to redo" + (f": {left_out}" if held else
                                                   ": every image's latest row is ok and its output exists"),
              file=sys.stderr)
        if not args.dry_run:
            return EXIT_OK
    elif held:
        print(f"rerun: {left_out}", file=sys.stderr)
    failed, missing = sum(g.failed for g in groups), sum(g.missing for g in groups)
    resumed = sum(g.interrupted for g in groups)
    if groups:
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
    for key in ("ok", "failed", "skipped", "quarantined", "total", "seconds", "megapixels_in", "megapixels_out",
                "device_seconds"):
        total[key] = sum(s.get(key, 0) for s in summaries)
    for s in summaries:
        total["failures"] += s["failures"]
        total["manifest"] = s["manifest"]
        if s.get("storage_error"):
            total.update(storage_error=s["storage_error"], spooled=s["spooled"])
    total.update(rerun_failed=failed, rerun_missing=missing, rerun_quarantined=held)
    return _report(total, args)


def _say_changed(groups) -> None:
    """One line per override that differs from what an earlier run recorded, so a rerun
    that no longer reproduces the recorded settings says so."""
    said = set()
    for group in groups:
        for name, (recorded, now) in group.changed.items():
            line = f"rerun: --{name} {_shown(name, now)} instead of the recorded {_shown(name, recorded)}"
            if line not in said:
                said.add(line)
                print(line, file=sys.stderr)


def _shown(name: str, value) -> str:
    if value is None:
        return {"format": "auto (the input's)", "tile": "auto", "overlap": "the model's", "scale": "model's own"}.get(
            name, "default")
    return f"{value:g}" if isinstance(value, float) else str(value)
