#!/usr/bin/env python
"""Train Hash3D-mini (a small Zero123-style model on procedural objects); see `hash3d.mini.train`.

    python tools/train_mini.py --out outputs/mini --minutes 15     # repeat until it prints "done"
    python tools/train_mini.py --out /tmp/mini-smoke --tiny         # CPU smoke test, well under a minute
"""

import sys
from pathlib import Path

try:
    import hash3d  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hash3d.mini.train import main

if __name__ == "__main__":
    sys.exit(main())
