"""``python -m poolwatch`` is the ``poolwatch`` command."""

import sys

from poolwatch.cli import main

sys.exit(main())
