#!/usr/bin/env python
"""Draw the attention of one translation as a heatmap PNG.

    python scripts/plot_attention.py --checkpoint runs/toy/best.pt --sentence "a b c d" \
        --output attention.png
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2s.cli import positive_int, reports_errors  # noqa: E402


@reports_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Plot the attention of one translation.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sentence", required=True, help="source sentence to translate")
    parser.add_argument("--output", default="attention.png", help="PNG file to write")
    parser.add_argument("--beam", type=positive_int, default=1)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)

    from s2s.inference import load_translator
    from s2s.plotting import plot_translation

    translator = load_translator(args.checkpoint, args.device)
    text = plot_translation(translator, args.sentence, args.output, args.beam)
    print(f"{text}\nattention written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
