"""What N+1 detection costs on top of plain query counting (the README's command).

    python benchmarks/detection_overhead.py [--rounds 9] [--requests 200]

Runs section 4 of ``benchmarks/suite.py`` alone: see :mod:`detection`.
"""

from __future__ import annotations

import sys

from detection import main

if __name__ == "__main__":
    sys.exit(main())
