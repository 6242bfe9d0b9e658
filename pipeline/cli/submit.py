"""`upscaler submit --address URL SRC DST [run options]`: `upscaler run` as a Ray job."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import EXIT_OK, EXIT_SOME_FAILED

CREDENTIAL_WORDS = ("key", "secret", "token", "password", "credential")


def add_parser(subparsers) -> argparse.ArgumentParser:
    submit = subparsers.add_parser("submit", help="submit `upscaler run` as a Ray job (Job Submission API); prints the job id")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit 0 only if it succeeded")
    submit.add_argument("run_args", nargs=argparse.REMAINDER, metavar="SRC DST [run options]")
    return submit


def command(args) -> int:
    """Validate the run options here, then hand `python jobs/upscale.py ...` to the cluster."""
    import shlex

    from pipeline.cli import build_parser

    run_args = [a for a in args.run_args if a != "--"]
    parsed = build_parser().parse_args(["run", *run_args])  # a usage error exits 2 before anything is sent
    for key, _ in parsed.storage_option:
        if any(word in key.lower() for word in CREDENTIAL_WORDS):
            raise ValueError(f"--storage-option {key}=... looks like a credential; the entrypoint is visible to "
                             "anyone who can list jobs: give it to the cluster's environment instead")
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(args.address)
    except (ConnectionError, RuntimeError, ValueError) as error:  # Ray's wording: "Failed to connect to Ray at ..."
        raise ValueError(f"--address {args.address}: no Ray job server answers there "
                         f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); give the cluster's "
                         "dashboard address, e.g. http://HEAD:8265") from None
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
