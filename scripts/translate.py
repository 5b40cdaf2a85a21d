#!/usr/bin/env python
"""Translate with a checkpoint: python scripts/translate.py --checkpoint best.pt < input.txt"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2s.cli import translate_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(translate_main())
