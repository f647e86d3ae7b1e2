"""What one checkout costs inside poolwatch's pool observer, with no database at all.

    python benchmarks/checkout_cycle.py [--cycles 200000] [--rounds 7] [--nplusone log]

One cycle is what an adapter reports for a statement that takes its own connection:
acquire started, acquire succeeded, the statement, release. The observer is poolwatch's
whole per-checkout bookkeeping (wait, hold and idle-while-held histograms, the statement
histogram, the checkout record and its gaps), so this isolates its cost from the driver's
and the ORM's, which the end-to-end benchmarks (``queries.py``, ``detection.py``) include.
With ``--nplusone log`` (the default of a ``PoolWatch()``) the checkout also samples its
thread's CPU time and context switches for ``held_idle`` findings. Prints the best
round's microseconds per cycle.
"""

from __future__ import annotations

import argparse
import sys
import time

from poolwatch import PoolWatch

__all__ = ["main"]


def cycle_cost(cycles: int, rounds: int, nplusone: str = "off") -> float:
    """Microseconds per cycle, the best of ``rounds`` rounds after a warm-up."""
    watch = PoolWatch(nplusone_mode=nplusone)
    events = watch.pool_events("bench")

    def cycle() -> None:
        ticket = events.acquire_started()
        events.acquire_succeeded(ticket, 1)
        events.query("SELECT name FROM item WHERE id = $1", 0.001, False)
        events.released(1)

    for _ in range(cycles // 10):
        cycle()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(cycles):
            cycle()
        best = min(best, (time.perf_counter() - started) / cycles)
    watch.uninstrument()
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--nplusone", default="off", help="the PoolWatch's nplusone_mode")
    args = parser.parse_args()
    cost = cycle_cost(args.cycles, args.rounds, args.nplusone)
    print(f"{cost:.2f} µs per acquire + statement + release in the pool observer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
