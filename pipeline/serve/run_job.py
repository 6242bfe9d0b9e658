"""`python -m pipeline.serve.run_job`: a job's process. It reads `{"argv": [...],
"storage_options": {...}}` from stdin and runs `upscaler` with them, so the server's
storage options (credentials) reach the run without appearing on a command line that
`ps` shows to every user of the machine. SIGTERM ends it as it ends `upscaler run`:
the images being written finish, their rows are written, exit 143."""

from __future__ import annotations

import json
import sys


def main() -> int:
    request = json.load(sys.stdin)
    argv = list(request["argv"])
    for key, value in request.get("storage_options", {}).items():
        argv.append(f"--storage-option={key}={json.dumps(value)}")
    from pipeline.cli import main as upscaler

    return upscaler(argv)


if __name__ == "__main__":
    sys.exit(main())
