"""GaussianDreamer launcher (threestudio-style): `python launch.py --config configs/X.yaml --train --gpu 0 key=value ...`."""

import sys
from pathlib import Path

try:
    import hash3d.launch
except ModuleNotFoundError as exc:  # not installed: use the checkout's src/
    if exc.name != "hash3d":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import hash3d.launch

if __name__ == "__main__":
    sys.exit(hash3d.launch.main())
