"""``python -m sdekit``: the ``sdekit`` command line (see :mod:`sdekit.cli`)."""
import sys

from .cli import main

sys.exit(main())
