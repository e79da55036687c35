"""``python -m kernelflow``: the same as the ``kernelflow`` command."""

import sys

from .cli import main

sys.exit(main())
