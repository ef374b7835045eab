"""``python -m saekit …`` is the ``saekit`` command; torchrun starts ranks this way
(``torchrun --nproc_per_node N -m saekit train …``)."""

import sys

from .cli import main

if __name__ == "__main__":  # importing the module (as package walkers do) runs nothing
    sys.exit(main())
