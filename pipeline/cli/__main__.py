"""`python -m pipeline.cli`: the `upscaler` command."""

import sys

from pipeline.cli import main

sys.exit(main())
