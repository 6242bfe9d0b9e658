"""Ray job entry point for training:

    ray job submit --working-dir . -- python jobs/train.py --config configs/edsr-x4.toml --workers 2

Same flags and behaviour as `upscaler train` (pipeline.train.run_train);
inside a Ray job it connects to the job's cluster (RAY_ADDRESS)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
