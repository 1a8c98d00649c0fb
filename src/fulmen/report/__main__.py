"""``python -m fulmen.report RUN_DIR [RUN_DIR ...] [--out DIR]``."""

import sys

from fulmen.report.cli import main

sys.exit(main())
