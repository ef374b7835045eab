"""``python -m saekit.cli …``: the ``saekit`` command."""

import sys

from . import main

if __name__ == "__main__":  # importing the module (as package walkers do) runs nothing
    sys.exit(main())
