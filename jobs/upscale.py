"""Ray job entry point: `ray job submit --working-dir . -- python jobs/upscale.py SRC DST [options]`.

Accepts exactly the options of `upscaler run`; inside a Ray job RAY_ADDRESS is
set, so the run joins that cluster.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the uploaded working dir, if not installed

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
