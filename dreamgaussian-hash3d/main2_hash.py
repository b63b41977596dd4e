"""The original Hash3D fork's name for main2.py (stage 2): `python main2_hash.py --config configs/image_sai_hash3d.yaml input=... save_path=...`."""

import sys
from pathlib import Path

try:
    import hash3d.systems.dreamgaussian.cli as cli
except ModuleNotFoundError as exc:  # not installed: use the checkout's src/
    if exc.name not in ("hash3d", "hash3d.systems"):
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import hash3d.systems.dreamgaussian.cli as cli

if __name__ == "__main__":
    sys.exit(cli.main_stage2())
