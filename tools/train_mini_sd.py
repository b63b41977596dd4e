#!/usr/bin/env python
"""Train Hash3D-mini-sd (a small text-to-image model on captioned procedural objects); see `hash3d.mini.train_sd`.

    python tools/train_mini_sd.py --out outputs/mini-sd --compile   # one command (< 10 min with evaluation)
    python tools/train_mini_sd.py --out /tmp/mini-sd-smoke --tiny      # CPU smoke test
"""

import sys
from pathlib import Path

try:
    import hash3d  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hash3d.mini.train_sd import main

if __name__ == "__main__":
    sys.exit(main())
