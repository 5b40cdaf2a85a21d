#!/usr/bin/env python
"""Draw the attention of one translation as a heatmap PNG (= ``s2s-plot attention``).

    python scripts/plot_attention.py --checkpoint runs/toy/best.pt --sentence "a b c d" \
        --output attention.png
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2s.cli import plot_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(plot_main(["attention", *sys.argv[1:]]))
