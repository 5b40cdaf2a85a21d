#!/usr/bin/env python
"""Train a model: python train.py --config configs/bahdanau.yaml [--set KEY=VALUE ...]"""

import sys

from s2s.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
