"""What N+1 detection costs per statement, in CPU instructions: a figure no noise moves.

    python benchmarks/detection_instructions.py [--scopes 10] [--cases sa,tortoise,...]
                                                [--against DIR]

The cases and their scopes are :mod:`detection`'s (about 50 statements per scope from one
loop, findings in every scope). Each case runs in a process of its own under valgrind's
callgrind, once with ``nplusone_mode="off"`` (counting) and once with ``"log"``
(detection): three scopes to warm up every cache (from the same line as the counted
ones: the call paths, and the pairs of lines the held-idle reader reads once, are the
same), then ``--scopes`` scopes counted, the count switched on and off around them by
callgrind's client requests (a C helper of two functions, built here with the system's
C compiler). The heap is collected and frozen (``gc.freeze``) just before: a collection
while counting then looks at what the counted scopes made, not at every object of the
process, whose full collection would land in whichever run crosses the threshold.
Callgrind counts the instructions the process runs, the interpreter's and the libraries'
alike, the same on every run of the same code and inputs, whatever else the machine
does: detection's cost is (detection - counting) / statements. Instructions are not
time: poolwatch's code runs cold in the CPU caches between two ORM calls, so an
instruction of it costs more than one of the ORM's (``detection.py`` measures the time).

The same code and inputs count alike to within a few hundred instructions per statement,
in one memory layout: addresses are fixed with ``setarch -R`` where it is found. Across
layouts, the ORM cases move by several percent (seen here: 40k per statement on a
SQLAlchemy ORM select, between two layouts of the same code), so each case runs in
``--layouts`` of them (the environment grown by a variable of another length: everything
in the process lies elsewhere), and the median of the differences is given, with each.

``--against DIR`` runs the same cases with the poolwatch package of another checkout (a
``git worktree`` of an older commit) in the same run, for a before and after. Needs
valgrind and a C compiler; each process takes 10-30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ctypes
import gc
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("off", "log")
WARM = 3  # scopes run before counting: every cache filled, every path walked once
_HELPER = """
#include <valgrind/callgrind.h>
void counting_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void counting_off(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""


def build_helper(folder: Path) -> Path:
    """The client-request helper, compiled into ``folder``."""
    source, library = folder / "counting.c", folder / "counting.so"
    source.write_text(_HELPER)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("a C compiler (cc) is needed to build the callgrind helper")
    subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True
    )
    return library


def _workload() -> types.ModuleType:
    """:mod:`detection`, imported for its cases only: its clocks reach into poolwatch's
    internals, which another version (``--against``) may not have, and are not used."""
    sys.modules.setdefault("_detection_clocks", types.ModuleType("_detection_clocks"))
    sys.path.insert(0, str(HERE))
    import detection

    return detection


def _settle() -> None:
    """Collect, then freeze what survives: a collection in the counted scopes looks at what
    they made, not at the whole process (a full collection of the ORM's objects costs
    tens of millions of instructions, and lands in whichever run crosses its threshold)."""
    gc.collect()
    gc.freeze()


def child(case: str, mode: str, scopes: int, helper: str) -> None:
    """Run in callgrind: warm up, then ``scopes`` scopes counted; print how many
    statements they ran (as poolwatch counts them, the same in both modes)."""
    counting = ctypes.CDLL(helper)
    bench = _workload()
    logging.getLogger("poolwatch.findings").disabled = True
    counter = bench._Counter()
    counted = 0  # statements before the counted scopes
    watch = bench.PoolWatch(nplusone_mode=mode)
    if case in bench.SQLALCHEMY_BODIES:
        body = bench.SQLALCHEMY_BODIES[case]
        engine = bench._sqlalchemy_engine()
        watch.instrument_sqlalchemy(engine, pool="bench")
        for turn, run in enumerate((WARM, scopes)):
            if turn:
                counted = counter.statements
                _settle()
                counting.counting_on()
            # One line for both: the call paths, and the pairs the held-idle reader
            # reads, are those the warm-up filled the caches with.
            body(engine, run, counter)
        counting.counting_off()
        print(counter.statements - counted)
        return

    async def tortoise() -> None:
        await bench.tortoise_database()
        watch.instrument_tortoise()
        body = bench.TORTOISE_BODIES[case]
        for turn, run in enumerate((WARM, scopes)):
            if turn:
                counted = counter.statements
                _settle()
                counting.counting_on()
            await body(run, counter)
        counting.counting_off()
        print(counter.statements - counted)
        await bench.Tortoise.close_connections()

    asyncio.run(tortoise())


def count(
    case: str, mode: str, scopes: int, helper: Path, root: Path | None, *, layout: int
) -> int:
    """Instructions per statement of ``case`` in ``mode``, poolwatch from ``root`` (or
    the installed one), in memory layout number ``layout``."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        # Each layout shifts where everything lies by an environment variable's length.
        env = dict(os.environ, PYTHONHASHSEED="0", POOLWATCH_BENCH_LAYOUT="x" * 97 * layout)
        if root is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        # Addresses the same in every run where setarch can turn randomisation off: the
        # ORMs and poolwatch key dictionaries by id(), whose probes follow the addresses.
        fixed = ["setarch", platform.machine(), "-R"] if shutil.which("setarch") else []
        command = [
            *fixed, "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", sys.executable, __file__,
            "--child", case, mode, str(scopes), str(helper),
        ]  # fmt: skip
        # From the caller's working directory, as detection.py runs: the call paths,
        # and the source the held-idle reader finds, are shown from it.
        done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{case} {mode}: {done.stderr[-2000:]}")
        total = 0
        for dump in Path(folder).glob("callgrind.out*"):
            for line in dump.read_text().splitlines():
                if line.startswith("totals:"):
                    total += int(line.split()[1])
    return total // int(done.stdout.split()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        case, mode, scopes, helper = sys.argv[2:6]
        child(case, mode, int(scopes), helper)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scopes", type=int, default=10)
    known = list(_workload().CASES)
    parser.add_argument("--cases", default=",".join(known), help="cases to run")
    parser.add_argument("--against", type=Path, help="another checkout's root, compared")
    parser.add_argument("--layouts", type=int, default=3, help="memory layouts, median")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        parser.error("valgrind is needed (Debian's valgrind package)")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(known)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(known)}")
    versions: dict[str, Path | None] = {"this": None}
    if args.against is not None:
        versions = {str(args.against): args.against.resolve(), "this": None}
    with tempfile.TemporaryDirectory() as folder:
        helper = build_helper(Path(folder))
        jobs = {
            (version, case, mode, layout): (case, mode, args.scopes, helper, root)
            for version, root in versions.items()
            for case in cases
            for mode in MODES
            for layout in range(args.layouts)
        }
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            futures = {key: pool.submit(count, *job, layout=key[3]) for key, job in jobs.items()}
            runs = {key: future.result() for key, future in futures.items()}
    counted = {
        (version, case, mode): [runs[(version, case, mode, n)] for n in range(args.layouts)]
        for version, case, mode, _ in runs
    }
    print(
        "| case | version | counting, instructions/stmt | detection | "
        "detection - counting (median) | per layout |"
    )
    print("|---|---|---|---|---|---|")
    for case in cases:
        for version in versions:
            off, log = counted[(version, case, "off")], counted[(version, case, "log")]
            each = [b - a for a, b in zip(off, log, strict=True)]
            print(
                f"| {case} | {version} | {statistics.median(off):,.0f} | "
                f"{statistics.median(log):,.0f} | {statistics.median(each):+,.0f} | "
                f"{', '.join(f'{d / 1000:+.1f}k' for d in each)} |"
            )
    print(
        f"\n{args.scopes} scopes after {WARM} to warm up, per process; {args.layouts} memory "
        f"layouts; CPython {sys.version.split()[0]}; instructions counted by callgrind."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
