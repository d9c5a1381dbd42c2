#!/usr/bin/env python3
"""``python launch.py …`` from a checkout: the same command as the installed ``prunetune``
console script (prunetune/cli.py)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from prunetune.cli import console  # noqa: E402

if __name__ == "__main__":
    console()
