"""``python -m fulmen ...``: the same as the ``fulmen`` console script."""

import sys

from fulmen.cli import main

sys.exit(main())
