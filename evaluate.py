#!/usr/bin/env python
"""Score a checkpoint: python evaluate.py --checkpoint runs/x/best.pt [--split test]"""

import sys

from s2s.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
