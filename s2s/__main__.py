"""``python -m s2s COMMAND``: train, evaluate, translate, average, export, plot."""

import sys

from s2s.cli import main

sys.exit(main())
