#!/usr/bin/env python3
"""Liquidation Heatmap's command line (the design asks for build.py at the top): see liquidation_heatmap/cli.py,
or run `python build.py --help`."""

import sys

from liquidation_heatmap.cli import main

if __name__ == "__main__":
    sys.exit(main())
