"""`python -m hash3d.batch …`: see `hash3d.batch.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
