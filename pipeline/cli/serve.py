"""`upscaler serve`: the HTTP API and web page (pipeline/serve), the engine in this
process; `upscaler serve keys add|list|revoke` manages its API keys."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import EXIT_OK
from pipeline.cli.options import UpscalerParser, add_storage_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pipeline.serve import config as defaults

    serve = subparsers.add_parser(
        "serve", help="HTTP API and web page: upscale uploads, start batch jobs",
        epilog="keys: `upscaler serve keys add NAME --keys FILE` prints a new key once (the file keeps its hash); "
               "`keys list`, `keys revoke NAME`. SIGTERM: new requests get 503, those in flight finish, exit 0.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    serve.add_argument("-m", "--model", action="append", default=[], metavar="SPEC|NAME=SPEC",
                       help="SPEC: the photo preset's model for every scale; NAME=SPEC: another preset, e.g. "
                            "anime=realesr-animevideov3.pth (repeatable; default: photo is the bundled model for "
                            "the scale, no anime preset)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 (default: %(default)s)")
    serve.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                       help="default: %(default)s (bf16 on CPUs with native bf16 and on CUDA, else fp32/fp16; "
                            "images deeper than 8 bits in fp32)")
    serve.add_argument("--workers", type=int, default=1,
                       help="inference threads, each with its own copy of the model (default: %(default)s)")
    serve.add_argument("--keys", default=None, metavar="FILE",
                       help="the API keys file, re-read when it changes (default: none: a key for this session "
                            "only, printed with the page's address)")
    serve.add_argument("--no-auth", action="store_true",
                       help="no keys: every /v1 route is open; refused unless --host is a loopback address")
    serve.add_argument("--max-upload-bytes", type=int, default=defaults.DEFAULT_MAX_UPLOAD_BYTES, metavar="N",
                       help="request body limit, from Content-Length and while streaming (default: %(default)s)")
    serve.add_argument("--max-pixels", type=int, default=defaults.DEFAULT_MAX_PIXELS, metavar="N",
                       help="input pixels of one upload, checked from the header before decoding (default: "
                            "%(default)s)")
    serve.add_argument("--max-output-pixels", type=int, default=defaults.DEFAULT_MAX_OUTPUT_PIXELS, metavar="N",
                       help="output pixels of one upload; lowers the input limit at large scales (default: "
                            "%(default)s)")
    serve.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                       help="per-image time limit, the engine's deadline: over it, 504 (default: %(default)s)")
    serve.add_argument("--queue-size", type=int, default=32, metavar="N",
                       help="upscale requests in the server at once; more get 429 with Retry-After (default: "
                            "%(default)s)")
    serve.add_argument("--max-batch", type=int, default=8, metavar="N",
                       help="equal-shape images sharing one forward call; 1: no dynamic batching (default: "
                            "%(default)s)")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                       help="how long a batch waits for equal-shape requests still being decoded (default: "
                            "%(default)s)")
    serve.add_argument("--allow-prefix", action="append", default=[], metavar="URL",
                       help="where jobs may read and write (repeatable; default: none, jobs disabled)")
    serve.add_argument("--max-jobs", type=int, default=1, help="jobs running at once (default: %(default)s)")
    serve.add_argument("--address", default=None,
                       help="a Ray cluster: jobs run on the Ray executor there (default: local jobs, no Ray)")
    serve.add_argument("--cors-origin", default=None, metavar="ORIGIN",
                       help="one origin allowed to call the API from a browser (default: none, CORS off)")
    serve.add_argument("--drain-seconds", type=float, default=60.0,
                       help="SIGTERM: how long requests in flight may take to finish (default: %(default)s)")
    add_storage_option(serve, help="for jobs' storage, e.g. endpoint_url=http://127.0.0.1:9000 (repeatable; "
                                   "default: none, the environment's credentials); server-side only: never in "
                                   "responses, logs or a command line")
    _add_keys_parser(serve)
    return serve


def _add_keys_parser(serve: argparse.ArgumentParser) -> None:
    sub = serve.add_subparsers(dest="serve_command", metavar="{keys}", parser_class=UpscalerParser)
    keys = sub.add_parser("keys", help="manage API keys: add, list, revoke")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="{add,list,revoke}",
                                  parser_class=UpscalerParser)
    add = actions.add_parser("add", help="make a key, print it once, store its hash")
    add.add_argument("name")
    add.add_argument("--jobs", action="store_true", help="may start and cancel batch jobs (default: upscale only)")
    add.add_argument("--rate", type=float, default=None, metavar="PER_MINUTE",
                     help="upscale and job requests per minute, then 429 with Retry-After (default: no limit)")
    add.add_argument("--concurrency", type=int, default=None, metavar="N",
                     help="such requests at once (default: no limit)")
    listing = actions.add_parser("list", help="the keys' names, permissions and limits (never the keys)")
    revoke = actions.add_parser("revoke", help="remove a key; a running server refuses it from its next request")
    revoke.add_argument("name")
    for parser in (add, listing, revoke):  # SUPPRESS: `serve --keys F keys list` keeps serve's value
        parser.add_argument("--keys", default=argparse.SUPPRESS, metavar="FILE", help="the API keys file")


def command(args) -> int:
    if args.serve_command == "keys":
        return _keys(args)
    from pipeline.serve.config import ServeConfig, parse_model_option
    from pipeline.serve.prefixes import normalise_prefix

    keys_file, session_key = args.keys, None
    if not args.keys and not args.no_auth:
        keys_file, session_key = _session_keys()
    config = ServeConfig(
        host=args.host, port=args.port, models=parse_model_option(args.model), device=args.device,
        precision=args.precision, workers=args.workers, keys_file=keys_file, no_auth=args.no_auth,
        max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels, max_output_pixels=args.max_output_pixels,
        time_limit=args.time_limit, queue_size=args.queue_size, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, allow_prefixes=tuple(normalise_prefix(p) for p in args.allow_prefix),
        cors_origin=args.cors_origin, address=args.address, max_jobs=args.max_jobs,
        storage_options=dict(args.storage_option), drain_seconds=args.drain_seconds)
    config.check()  # before torch is imported: a refusal costs nothing
    from pipeline.serve.app import create_app
    from pipeline.serve.presets import Presets
    from pipeline.serve.server import serve

    presets = Presets(config.models)
    for name in sorted(set(config.models) | {"photo"}):  # an unloadable model is a usage error now, not a 500 later
        spec = presets.spec_for(name, None)
        presets.load(spec, 4)
    app = create_app(config, presets=presets)
    keys = "no auth (loopback only)" if config.no_auth else f"keys from {config.keys_file}"
    if session_key:
        keys = "a key for this session only; --keys FILE for lasting ones"
    if app.state.service.keys is not None and not len(app.state.service.keys):
        print(f"upscaler serve: {config.keys_file} has no keys yet: every /v1 request is refused until "
              f"`upscaler serve keys add NAME --keys {config.keys_file}`", file=sys.stderr)
    jobs = f"jobs under {', '.join(config.allow_prefixes)}" if config.jobs_enabled else "jobs disabled"
    page = f"http://{config.host}:{config.port}/" + (f"#key={session_key}" if session_key else "")
    print(f"upscaler serve: {page} ({keys}; {jobs})", file=sys.stderr, flush=True)
    if session_key:
        print(f"upscaler serve: API key for this session: {session_key}", file=sys.stderr, flush=True)
    serve(app)
    return EXIT_OK


def _session_keys() -> tuple[str, str]:
    """With no --keys: one key, upscale and jobs, in a private file removed at exit. The
    page's address carries it in the fragment, which the browser keeps to itself."""
    import atexit
    import shutil
    import tempfile

    from pipeline.serve import keys

    folder = tempfile.mkdtemp(prefix="upscaler-serve-")  # 0700: this user only
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = f"{folder}/keys.json"
    return path, keys.add_key(path, "session", jobs=True)


def _keys(args) -> int:
    from pipeline.serve import keys

    path = getattr(args, "keys", None)
    if not path:
        raise ValueError("give --keys FILE: the keys file the server reads")
    if args.keys_command == "add":
        token = keys.add_key(path, args.name, jobs=args.jobs, rate_per_minute=args.rate, concurrency=args.concurrency)
        print(token)
        print(f"upscaler serve keys: key {args.name!r} added to {path}; it is shown only now", file=sys.stderr)
    elif args.keys_command == "list":
        rows = [k.public() for k in keys.read_keys(path)]
        print(f"{'name':<24}{'permissions':<16}{'rate/min':>9}{'concurrency':>12}  created")
        for r in rows:
            print(f"{r['name']:<24}{','.join(r['permissions']):<16}{_text(r['rate_per_minute']):>9}"
                  f"{_text(r['concurrency']):>12}  {r['created_at']}")
    else:
        keys.revoke_key(path, args.name)
        print(f"upscaler serve keys: key {args.name!r} revoked", file=sys.stderr)
    return EXIT_OK


def _text(value) -> str:
    return "-" if value is None else f"{value:g}"
