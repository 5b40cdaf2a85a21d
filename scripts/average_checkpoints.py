#!/usr/bin/env python
"""Average checkpoints of one model: python scripts/average_checkpoints.py runs/x/step_*.pt --output avg.pt"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2s.cli import average_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(average_main())
