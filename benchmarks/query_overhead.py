"""Per-query cost of poolwatch's instrumentation (the README's command; now in the suite).

    python benchmarks/query_overhead.py [--rounds 15] [--ops 3000] [--pg postgresql://...]

Runs section 2 of ``benchmarks/suite.py`` alone: :mod:`queries` times primary-key lookups
bare, with poolwatch, with OpenTelemetry and with a minimal event-pair floor, interleaved,
and prints the ratios of medians.
"""

from __future__ import annotations

import sys

from queries import main

if __name__ == "__main__":
    sys.exit(main())
