"""``python -m plugin``: the ``multinic`` command."""

import sys

from .ops.cli import main

sys.exit(main())
