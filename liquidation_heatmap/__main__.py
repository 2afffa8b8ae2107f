"""`python -m liquidation_heatmap COMMAND ...`: the same as build.py (the fan-out's tasks run their builds so, where
a worker may have the package but not the checkout's build.py)."""

import sys

from .cli import main

sys.exit(main())
