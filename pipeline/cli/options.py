"""What several subcommands share: option groups, the RunSpec built from them, and
the printing of a plan and of a run's summary (and `_execute`/`_summary`, which run
a spec on the chosen executor). Heavy imports stay inside the functions: building
the parser must not import torch."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys

from pipeline.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_STORAGE

# What `--format` takes, with the spellings other tools use (Real-ESRGAN's `--ext jpg`); each is
# normalised here, at parse time, so the RunSpec (and its resume key) never sees the alias.
FORMATS = ("png", "tiff", "jpeg", "webp")

# Nothing to act on: `run --fail-on-empty` over a source with no images, `runs`/`rerun` on a
# destination with no manifest. Not 0, so a scheduled job aimed at a mistyped or emptied
# prefix turns red; not 2 (usage), since the command line itself was valid.
EXIT_EMPTY = 6
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff", "auto": None}


class HelpFormatter(argparse.HelpFormatter):
    """`-m, -n, --model MODEL` rather than `-m MODEL, -n MODEL, --model MODEL`: aliases
    would otherwise double the width of the options' column (Python 3.13 does this too)."""

    def _format_action_invocation(self, action):
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        return ", ".join(action.option_strings) + " " + self._format_args(
            action, self._get_default_metavar_for_optional(action))


class UpscalerParser(argparse.ArgumentParser):
    """The parser of `upscaler` and of every subcommand: a usage error names the closest
    option or choice ("did you mean --scale?"), and an unknown option is reported with
    the subcommand's usage, not the top level's (argparse reports extras from the top)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen_subcommand(namespace).error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace

    def _chosen_subcommand(self, namespace) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(namespace, action.dest, None) or "")
                if chosen is not None:
                    return chosen._chosen_subcommand(namespace) if isinstance(chosen, UpscalerParser) else chosen
        return self

    def error(self, message: str):
        super().error(message + self._suggestion(message))

    def _suggestion(self, message: str) -> str:
        """' (did you mean --scale?)' for the unknown options (or the invalid choice) in `message`."""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), options, n=1)
            return f" (did you mean {close[0]!r}?)" if close else ""
        if not message.startswith("unrecognized arguments: "):
            return ""
        known = sorted(self._option_string_actions)
        pairs = []
        for word in message.removeprefix("unrecognized arguments: ").split():
            name = word.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1) if name.startswith("-") and len(name) > 2 else []
            pairs += [(name, close[0])] if close else []
        if len(pairs) == 1:
            return f" (did you mean {pairs[0][1]}?)"
        return f" (did you mean {', '.join(f'{m} for {n}' for n, m in pairs)}?)" if pairs else ""


def add_global_options(p: argparse.ArgumentParser, *, in_subcommand: bool) -> None:
    """Options every subcommand takes, before or after its name (`upscaler -v run ...` and
    `upscaler run ... -v`). The subcommand's copy defaults to SUPPRESS: argparse copies a
    subparser's values over the top level's, so a default there would undo `upscaler -v run`."""
    default = argparse.SUPPRESS if in_subcommand else False
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log at INFO level on stderr")


def global_options() -> argparse.ArgumentParser:
    """The parent (argparse `parents=`) of every subcommand's parser."""
    parent = argparse.ArgumentParser(add_help=False)
    add_global_options(parent, in_subcommand=True)
    return parent


class Subcommands(argparse._SubParsersAction):
    """`add_subparsers(action=Subcommands)`: every subcommand gets the global options as a
    parent, so a subcommand module cannot forget them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._global = global_options()

    def add_parser(self, name, **kwargs):
        kwargs["parents"] = [self._global, *kwargs.get("parents", ())]
        return super().add_parser(name, **kwargs)


def _positive_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"scale must be a positive number, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("scale must be positive")
    return value


def _output_format(text: str) -> str | None:
    """--format/--ext: png, tiff (tif), jpeg (jpg), webp, any case; auto = the input's."""
    name = text.lower().lstrip(".")
    name = FORMAT_ALIASES.get(name, name)
    if name is not None and name not in FORMATS:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from png, tiff/tif, jpeg/jpg, webp, auto)")
    return name


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
    extra.setdefault("help", "passed to the filesystem, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable; "
                             "default: none, the environment's credentials); never recorded")
    p.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE",
                   **extra)


def add_engine_options(p: argparse.ArgumentParser, scale: bool = True, *, override: bool = False) -> None:
    """Model and inference options; the short aliases are Real-ESRGAN's (`-n`, `-s`, `-t`, `--fp32`).
    `override` (rerun): no defaults, so an option not given is absent and the recorded value holds."""
    g = p.add_argument_group("engine")
    d, h = _override_defaults(override)
    g.add_argument("-m", "-n", "--model", default=d(None),
                   help=h("named model, local path or fsspec URL (default: the bundled model for the "
                          "scale: edsr-x4, or edsr-x2 up to x2; bicubic at x1 or below)"))
    if scale:
        g.add_argument("-s", "--scale", type=_positive_scale, default=d(None),
                       help=h("output scale; may differ from the model's (x3 from x4, x8 in two passes, 2.5) "
                              "(default: the model's own, x4 without --model)"))
    g.add_argument("-t", "--tile", type=int, default=d(None),
                   help=h("tile size in input pixels; 0 = whole image (default: from the memory budget)"))
    g.add_argument("--overlap", type=int, default=d(None),
                   help=h("tile overlap in input pixels (default: the model's)"))
    g.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default=d("auto"),
                   help=h("floating-point precision; default: auto (bf16 on CPUs with native bf16, AVX512-BF16 or AMX, "
                          "else fp32; on CUDA bf16 where the card and model support it, else fp16; images deeper "
                          "than 8 bits in fp32)"))
    g.add_argument("--fp32", dest="precision", action="store_const", const="fp32", default=d(None),
                   help="same as --precision fp32")
    g.add_argument("--compile", action="store_true", default=d(False),
                   help=h("torch.compile the model (CUDA graphs on CUDA): each tile shape compiles once, tens of "
                          "seconds; pays off on long runs with a fixed --tile (default: off)"))
    g.add_argument("--device", default=d("auto"),
                   help=h("auto, cpu, cuda, cuda:1 ... (default: auto, the first CUDA GPU if there is one, else the CPU)"))


def add_output_options(p: argparse.ArgumentParser, *, override: bool = False) -> None:
    """--format/--ext and --quality (`run`, `plan`; `rerun` with `override`, as in add_engine_options)."""
    d, h = _override_defaults(override)
    p.add_argument("--format", "--ext", type=_output_format, default=d(None), metavar="{png,tiff,jpeg,webp}",
                   help=h("output format; also tif, jpg, and auto (default: auto, the input's; GIF becomes PNG)"))
    p.add_argument("--quality", type=int, default=d(95),
                   help=h("JPEG/WebP quality, WebP 100 = lossless (default: %(default)s)"))


def _override_defaults(override: bool):
    """(default, help) rewriters: as given, or, for `rerun`, SUPPRESS (the option is absent
    unless given) and a help text whose default is the earlier run's."""
    if not override:
        return (lambda value: value), (lambda text: text)
    return (lambda value: argparse.SUPPRESS), (lambda text: re.sub(r"\(?default: .*$", "", text).rstrip(" ;")
                                               + " (default: as the earlier run recorded)")


def add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--executor", choices=("ray", "local"), default="ray",
                   help="ray (default: joins --address / RAY_ADDRESS, else starts a local Ray) or local (in this process, no Ray)")
    g.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    g.add_argument("--workers", type=int, default=None, help="model-holding actors (default: one per GPU, else CPUs // 2)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 where GPUs exist, else 0")
    g.add_argument("--cpus-per-worker", type=float, default=None,
                   help="default: the CPUs but one shared among the workers, at least 0.25 each (Ray Data's own "
                        "tasks need a CPU left)")
    g.add_argument("--stall-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="Ray: end the run (rows written, exit 5) when no image has finished for this long, "
                        "saying what Ray waits for; 0: wait forever (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=4,
                   help="images per batch: their tiles share forward passes (default: %(default)s)")
    add_storage_option(g)
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress bar on stderr (default: when stderr is a terminal)")


def add_price_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-hour-price", type=float, default=None, metavar="USD",
                   help="price of one device-hour, to turn device-seconds into a cost (default: none, no cost shown)")


def add_run_options(run: argparse.ArgumentParser) -> None:
    """What a run does (shared by `run` and `plan`)."""
    from pipeline.formats.dicom import SYNTAX_CHOICES  # numpy, no torch

    run.add_argument("src", help="source prefix, object or local folder (fsspec URL or path)")
    run.add_argument("dst", help="destination prefix (fsspec URL or path); for a single-file SRC, a file name with "
                                 "an image extension: SRC's name with that extension (photo.jpg -> out/photo.png)")
    add_engine_options(run)
    add_output_options(run)
    run.add_argument("--keep-extension", action="store_true",
                     help="name outputs after the whole source name (photo.gif -> photo.gif.png), so sources of one "
                          "stem never share an output (without it, such sources are refused, each naming the other)")
    run.add_argument("--compress-level", type=int, choices=range(10), default=1, metavar="0-9",
                     help="zlib level for PNG and TIFF (default 1: fast; 6 is about 10%% smaller and 4x slower)")
    run.add_argument("--dicom-syntax", choices=SYNTAX_CHOICES, default="explicit",
                     help="DICOM output transfer syntax, lossless only: 'explicit' (Explicit VR Little Endian, "
                          "uncompressed), 'rle' (RLE Lossless), 'keep' (the input's when it is RLE Lossless, or "
                          "JPEG-LS Lossless with pyjpegls installed; else explicit) (default: %(default)s)")
    run.add_argument("--reference", default=None,
                     help="folder of high-resolution references for PSNR/SSIM/LPIPS (default: none, no-reference metrics only)")
    run.add_argument("--include", action="append", default=[],
                     help="glob on the relative key (repeatable; default: every file with an image extension)")
    run.add_argument("--exclude", action="append", default=[], help="glob on the relative key (repeatable; default: none)")
    run.add_argument("--max-pixels", type=int, default=None, metavar="N",
                     help="refuse inputs with more pixels, a decompression-bomb guard "
                          "(default: 400000000 = 20000 x 20000)")
    run.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                     help="per-image time limit, checked between tiles: a slower image gets a failed row (default: none)")
    run.add_argument("--storage-failures", type=int, default=5, metavar="N",
                     help="after N images in a row fail on storage (each after its retries), do not attempt the "
                          "rest: they get failed rows for `upscaler rerun` (default: %(default)s; 0: never give up)")
    run.add_argument("--from-list", default=None,
                     help="text (one URL or key per line) or Parquet list of images under SRC (default: list SRC)")
    run.add_argument("--force", action="store_true", help="reprocess every image: those earlier runs did, and the quarantined ones (default: off)")
    run.add_argument("--stac-source", default=None, metavar="TEMPLATE|FILE",
                     help="georeferenced outputs: the STAC Item each source was made from, linked as `derived_from` "
                          "from the output's Item: a URL template with {key} (the source key) or {stem} (its name "
                          "without extension, a SAFE's product id), or a JSON object / CSV (key,item) file of "
                          "source key (or URL) -> Item URL (default: none; the Item names the source file as an asset)")
    run.add_argument("--run-id", default=None,
                     help="the run's id in the manifest (default: a new one from the start time, e.g. 20250101T120000Z-1a2b3c)")
    run.add_argument("--include-quarantined", action="store_true",
                     help="also retry images that failed the same deterministic way in earlier runs")
    run.add_argument("--band-mode", choices=("rgb+gray", "each"), default="rgb+gray",
                     help="rasters: 'rgb+gray' runs the Red/Green/Blue bands (GDAL COLORINTERP, else the first three) "
                          "through the model together and every other band alone through the gray path; 'each' runs "
                          "every band alone (default: %(default)s)")
    run.add_argument("--radiometric", choices=("auto", "minmax", "dtype"), default="auto",
                     help="rasters: mapping to the model's [0, 1]: 'minmax' (valid data range, shared by the RGB triplet), "
                          "'dtype' (the sample type's full range), 'auto' (dtype for uint8, else minmax); recorded in "
                          "the manifest (default: %(default)s)")
    run.add_argument("--stream-threshold", type=int, default=4096 * 4096, metavar="PIXELS",
                     help="TIFF and JPEG 2000 files with more pixels are read, upscaled and written window by window "
                          "(a COG for georeferenced rasters, else a tiled (Big)TIFF), memory bound by the window "
                          "(default 16777216 = 4096 x 4096; 0: never)")
    run.add_argument("--raster-format", choices=("cog", "gtiff"), default="cog",
                     help="georeferenced rasters: 'cog' writes a Cloud-Optimized GeoTIFF with overviews (GDAL's COG "
                          "driver), 'gtiff' a tiled GeoTIFF without overviews (default: %(default)s)")
    run.add_argument("--raster-compress", choices=("deflate", "zstd", "lzw", "none"), default="deflate",
                     help="georeferenced rasters: compression, at --compress-level for deflate and zstd, with a "
                          "predictor (default: %(default)s)")
    run.add_argument("--raster-blocksize", type=int, default=512, metavar="N",
                     help="georeferenced rasters: tile side in pixels, a multiple of 16 (default: %(default)s)")
    run.add_argument("--nifti-plane", choices=("auto", "axial", "coronal", "sagittal"), default="auto",
                     help="NIfTI volumes: the plane their slices are upscaled in; 'auto' takes the two axes with the "
                          "finer voxels (axial when isotropic), by the affine's orientation (default: %(default)s)")
    run.add_argument("--limit", type=int, default=None, metavar="N",
                     help="pilot run: the first N images to do (default: all)")
    run.add_argument("--sample", type=int, default=None, metavar="N",
                     help="pilot run: a random N of the images to do (default: all)")


def config_from_args(args):
    from pipeline import formats
    from pipeline.spec import RunSpec

    dst, output_format = _destination(args)
    return RunSpec(
        src=args.src, dst=dst, model=args.model, scale=args.scale,
        tile=args.tile, overlap=args.overlap, precision=args.precision, compile=args.compile, format=output_format,
        quality=args.quality, compress_level=args.compress_level, reference=args.reference, include=tuple(args.include),
        exclude=tuple(args.exclude), max_pixels=args.max_pixels or formats.DEFAULT_MAX_PIXELS,
        batch_images=max(1, getattr(args, "batch_size", 4)), device=args.device, run_id=args.run_id,
        force=args.force, from_list=args.from_list, storage_options=dict(args.storage_option),
        include_quarantined=args.include_quarantined, limit=args.limit, sample=args.sample,
        band_mode=args.band_mode, radiometric=args.radiometric, stream_threshold=args.stream_threshold,
        nifti_plane=args.nifti_plane, time_limit=args.time_limit, storage_failures=args.storage_failures,
        keep_extension=args.keep_extension, stac_source=args.stac_source, dicom_syntax=args.dicom_syntax,
        raster_format=args.raster_format, raster_compress=args.raster_compress, raster_blocksize=args.raster_blocksize,
    )


def _destination(args) -> tuple[str, str | None]:
    """(DST folder, output format) for the RunSpec. `run photo.jpg out/photo.png` names a
    file: the run writes into its folder (manifest in out/_manifest), as PNG, the format
    its extension implies. The output's name comes from the source's (the planner's
    `output_key`), so a file destination must be that name: anything else is refused,
    saying which name it would be, rather than writing a file the user did not name."""
    import posixpath

    from pipeline.stages.list import EXTENSION_FORMATS
    from pipeline.store import split_extension

    extension = split_extension(args.dst.rstrip("/"))[1].lower()
    if args.from_list or args.dst.endswith("/") or extension not in EXTENSION_FORMATS:
        return args.dst, args.format
    from pipeline import store

    options = dict(args.storage_option)
    src_fs, src_root = store.open_location(args.src, options)
    dst_fs, dst_root = store.open_location(args.dst, options)
    if not src_fs.isfile(src_root) or dst_fs.isdir(dst_root):
        return args.dst, args.format  # a folder source (or an existing folder) keeps DST a folder, whatever its name
    implied = EXTENSION_FORMATS[extension]
    if implied in ("dicom", "nifti", "nifti-gz"):
        implied = None  # DICOM and NIfTI are written as they are whatever is asked; the write stage says so
    elif implied not in FORMATS:
        raise ValueError(f"{args.dst}: {implied.upper()} is not an output format; give the destination one of "
                         f".png, .tif, .jpg, .webp")
    if args.format and implied and args.format != implied:
        raise ValueError(f"--format {args.format} disagrees with the destination {args.dst!r} ({implied}): "
                         f"drop --format, or give the destination the .{_extension(args.format)} extension")
    if store.relation(args.src, args.dst, options) == "same":
        raise ValueError(f"source and destination are the same file ({args.dst}): the output would replace the "
                         "original; give another destination")
    folder, name = _split(args.dst)
    if folder.endswith("://"):
        return args.dst, args.format  # s3://photo.png is a bucket, not a file in one
    from pipeline.spec import RunSpec
    from pipeline.stages.list import output_key

    fmt = args.format or implied
    written = output_key(posixpath.basename(src_root), RunSpec(src=args.src, dst=folder, model="bicubic", format=fmt,
                                                                keep_extension=args.keep_extension))
    if written != name:
        target = _join(folder, written)
        if store.relation(args.src, target, options) == "same":
            target = _join(folder, "upscaled/" + written)  # not over the source itself
        raise ValueError(f"a single image keeps its name (the destination's extension may change its format): "
                         f"{args.src} can be written as {target}, not as {args.dst}; give that, or a folder, as the "
                         "destination, or rename the source first")
    return folder, fmt


def _extension(fmt: str) -> str:
    return {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)


def _split(url: str) -> tuple[str, str]:
    """("folder", "name") of a path or URL; the folder of a bare name is "."."""
    protocol, sep, path = url.rpartition("://")
    folder, _, name = path.rpartition("/")
    if not folder:
        folder = "/" if path.startswith("/") else ("" if protocol else ".")
    return (protocol + sep + folder) if protocol else folder, name


def _join(folder: str, name: str) -> str:
    return name if folder == "." else folder.rstrip("/") + "/" + name


def no_manifest(command: str, dst: str, storage_options: dict) -> bool:
    """Say so (one line on stderr) when nothing was ever run under DST; True then."""
    from pipeline.ops.runs import has_manifest

    if has_manifest(dst, storage_options):
        return False
    print(f"upscaler {command}: no manifest under {dst}: nothing was ever run there", file=sys.stderr)
    return True


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

    options = RayOptions(address=args.address, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                         gpus_per_worker=args.gpus_per_worker, stall_timeout=args.stall_timeout)
    return run_ray(config, options, progress=args.progress)


def _summary_rows(summary: dict) -> list[tuple[str, object]]:
    """The text summary: counts (quarantined beside ok/failed/skipped), seconds to 0.1,
    megapixels to 2 decimals; the cost only when a price was given."""
    seconds, mpx_in, mpx_out = float(summary["seconds"]), summary["megapixels_in"], summary["megapixels_out"]
    rows = [("run", summary["run_id"]), ("ok", summary["ok"]), ("failed", summary["failed"]),
            ("skipped", summary["skipped"]), ("quarantined", summary.get("quarantined", 0)),
            ("megapixels in / out", f"{mpx_in:.2f} / {mpx_out:.2f}"),
            ("seconds", f"{seconds:.1f} ({mpx_out / max(seconds, 1e-9):.2f} Mpx/s out; "
                        f"{summary.get('device_seconds', 0):.1f} device-s)")]
    if summary.get("cost") is not None:
        rows.append(("cost", f"{summary['cost']:.4f} USD"))
    rows.append(("manifest", summary["manifest"]))
    if summary.get("stac_collection") or summary.get("stac_collection_error"):
        rows.append(("STAC collection", summary.get("stac_collection") or summary["stac_collection_error"]))
    return rows


def _report(summary: dict, args) -> int:
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for name, value in _summary_rows(summary):
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
