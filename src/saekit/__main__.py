"""``python -m saekit …`` is the ``saekit`` command; torchrun starts ranks this way
(``torchrun --nproc_per_node N -m saekit train …``)."""

import sys

from .cli import main

sys.exit(main())
