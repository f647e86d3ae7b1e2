"""Interleaved rounds, medians, targets and Markdown tables: what every benchmark here shares.

A benchmark runs its setups in turn, round after round, so that a noisy machine slows them
all alike; every other round runs them in reverse order (A B C, C B A, A B C, ...), so
that no setup always follows the same one (a cache, a collector or a clock that drifts
within a round would otherwise favour one position). Each setup's figure is the median
of its rounds, and a setup is compared with the baseline as the ratio of the two medians.
The spread column is the interquartile range of the per-round ratios (each round's setup
against the same round's baseline, run moments apart): when it straddles a target, the
verdict is within the noise.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "Samples",
    "Table",
    "Target",
    "column",
    "interleave",
    "interleave_async",
    "order",
    "ratio",
    "spread",
]

Samples = dict[str, list[float]]
T = TypeVar("T")


def order(setups: Sequence[str], index: int) -> Sequence[str]:
    """The setups in the order round ``index`` runs them: reversed every other round."""
    return setups if index % 2 == 0 else setups[::-1]


def interleave(
    setups: Sequence[str], rounds: int, run: Callable[[str], T], *, discard: int = 0
) -> dict[str, list[T]]:
    """``run(setup)`` for every setup in turn (reversed every other round), ``rounds`` times.

    Returns the samples by setup, in round order. The first ``discard`` rounds run
    before those and are thrown away (first-use costs: caches, pools, prepared statements).
    """
    samples: dict[str, list[T]] = {setup: [] for setup in setups}
    for index in range(discard + rounds):
        for setup in order(setups, index):
            sample = run(setup)
            if index >= discard:
                samples[setup].append(sample)
    return samples


async def interleave_async(
    setups: Sequence[str],
    rounds: int,
    run: Callable[[str], Awaitable[T]],
    *,
    discard: int = 0,
) -> dict[str, list[T]]:
    """:func:`interleave` for a coroutine ``run``."""
    samples: dict[str, list[T]] = {setup: [] for setup in setups}
    for index in range(discard + rounds):
        for setup in order(setups, index):
            sample = await run(setup)
            if index >= discard:
                samples[setup].append(sample)
    return samples


def column(samples: Mapping[str, Sequence[Sequence[float]]], index: int) -> Samples:
    """One figure of samples that measured several (``run`` returned tuples)."""
    return {setup: [values[index] for values in rows] for setup, rows in samples.items()}


def ratio(samples: Samples, setup: str, baseline: str) -> float:
    """Median of ``setup`` over median of ``baseline``."""
    return statistics.median(samples[setup]) / statistics.median(samples[baseline])


def spread(samples: Samples, setup: str, baseline: str) -> str:
    """The interquartile range of the per-round ratios, as ``"1.02-1.09"``."""
    if setup == baseline:
        return "-"
    ratios = [a / b for a, b in zip(samples[setup], samples[baseline], strict=True)]
    if len(ratios) < 4:
        return f"{min(ratios):.2f}-{max(ratios):.2f}"
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{low:.2f}-{high:.2f}"


@dataclass(frozen=True)
class Target:
    """A goal a figure is held against, and whether it was met."""

    goal: str
    met: bool

    def __str__(self) -> str:
        return f"{self.goal}: {'met' if self.met else '**missed**'}"


@dataclass
class Table:
    """A Markdown table with a title; rows of already formatted cells."""

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[tuple[str, Target]] = field(default_factory=list)

    def add(self, *cells: object, target: Target | None = None) -> None:
        """Append a row; the target (if any) fills the last column and is remembered."""
        row = [str(cell) for cell in cells]
        if target is not None:
            section = self.title.split(" ", 1)[0].rstrip(".")
            self.targets.append((f"{section}: {' / '.join(row[:2])}", target))
        row.append("-" if target is None else str(target))
        if len(row) != len(self.columns):
            raise ValueError(f"{len(row)} cells for columns {self.columns}")
        self.rows.append(row)

    def render(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "---|" * len(self.columns))
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines)
