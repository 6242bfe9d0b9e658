"""`upscaler`: the command line.

Exit codes: 0 all succeeded; 3 some images failed; 2 usage error (bad arguments,
missing source, unloadable model) or a storage error that retrying cannot fix
(name too long, not a directory, access refused); 4 storage unreachable (still
failing after the retries: run the same command again later); 5 a Ray run made no
progress for --stall-timeout; 6 nothing to act on (`run --fail-on-empty` over an
empty source, `runs`/`rerun` without a manifest); 130/143 stopped by
Ctrl-C/SIGTERM (what is done is recorded); 141 (128 + SIGPIPE, as a command the
signal ends) when stdout is closed early, e.g. `upscaler plan ... --json | head`.

One module per subcommand (`pipeline/cli/run.py`, ...), each with
`add_parser(subparsers)` and `command(args) -> int`; `options.py` holds what
several share. Imports that need torch stay inside the commands that need it.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_STORAGE, EXIT_STALLED = 0, 2, 3, 4, 5
EXIT_BROKEN_PIPE = 128 + 13  # 128 + SIGPIPE (a literal: Windows has no signal.SIGPIPE)

# The command modules import the exit codes above from here, so they come after them.
from pipeline.cli import (calibrate, demo, models, options, plan, report, rerun,  # noqa: E402
                          run, runs, serve, submit, train)
from pipeline.cli import eval as evaluate  # noqa: E402  (a name that does not read as the builtin)
from pipeline.cli.options import (add_engine_options, add_executor_options, add_run_options,  # noqa: E402, F401
                                  config_from_args)

# `upscaler --help` lists the subcommands in this order.
COMMANDS = (run, plan, calibrate, submit, report, runs, evaluate, rerun, demo, train, models, serve)

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_SOME_FAILED", "EXIT_STORAGE", "EXIT_STALLED", "EXIT_BROKEN_PIPE", "COMMANDS",
           "build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `upscaler` parser. Global options (-v) go before or after the subcommand; every
    subcommand's parser is an UpscalerParser, whose usage errors name the closest option."""
    parser = options.UpscalerParser(prog="upscaler", description="Batch super-resolution for image archives.",
                                    epilog="`upscaler COMMAND --help` lists a command's options.")
    options.add_global_options(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", required=True, action=options.Subcommands, metavar="COMMAND",
                                parser_class=options.UpscalerParser)
    for module in COMMANDS:
        module.add_parser(sub).set_defaults(handler=module.command)
    return parser


def _raised(error: BaseException, module: str, name: str) -> bool:
    """isinstance(error, module.name) without importing the module: an error of a
    class whose module was never imported was not raised (and `upscaler runs` or
    `report` must not pay for importing the job, which brings torch)."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(error, getattr(loaded, name))


def _stdout_gone() -> bool:
    """Whether stdout's reader went away (`| head` exited): a BrokenPipeError from a
    storage client's socket must not pass for it and end the run without a word."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return False  # no real stdout (in-process callers): the pipe was another one
    if not hasattr(select, "poll"):
        return True  # Windows: no way to ask; stdout is by far the likeliest pipe
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """After EPIPE: point fd 1 at /dev/null, so the interpreter's own flush of
    what is still buffered at exit does not fail again ("Exception ignored ...
    BrokenPipeError", exit 120). In-process callers (tests) may have no real fd."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handling below, not at exit
        return status
    except BrokenPipeError as error:
        if not _stdout_gone():
            return _failed(error, args.command)
        _silence_stdout()  # the reader went away (`| head`): stop quietly, as other commands do
        return EXIT_BROKEN_PIPE
    except ValueError as error:  # ModelLoadError and UnsafeKeyError are ValueErrors
        print(f"upscaler {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        return _failed(error, args.command)


def _failed(error: Exception, command: str) -> int:
    """The exit status for what a command raised, after saying so on stderr; anything
    else (a bug) re-raises with its traceback. Call it from an `except` block."""
    if _raised(error, "pipeline.job.sink", "RunInterrupted"):
        summary = error.summary
        print(f"upscaler {command}: interrupted ({error.signal_name}) after {summary['ok']} ok and "
              f"{summary['failed']} failed images; their rows are in {summary['manifest']}.\n"
              f"  Run the same command again (or `upscaler rerun DST`) to finish: what is done is skipped.",
              file=sys.stderr)
        return error.exit_status
    if _raised(error, "pipeline.job.ray", "StalledError"):
        print(f"upscaler {command}: error: {error}", file=sys.stderr)
        return EXIT_STALLED
    from pipeline import store

    if store.is_transient(error):  # StorageUnavailable (retried, still failing), connection errors
        print(f"upscaler {command}: error: storage unreachable: {type(error).__name__}: {error}\n"
              f"  run the same command again once storage is back: what is already done is skipped.",
              file=sys.stderr)
        return EXIT_STORAGE
    if store.is_permanent(error):  # PermanentStorageError, FileNotFoundError, PermissionError, ENOTDIR...
        # one line, no traceback, and not "unreachable": running it again fails the same way
        print(f"upscaler {command}: error: {store.one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    raise error


if __name__ == "__main__":
    sys.exit(main())
