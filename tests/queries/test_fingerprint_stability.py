"""Fingerprints are the same in every process: findings aggregate across workers and
restarts, and allow-lists keep matching (Tortoise may order columns differently per process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fingerprints(seed: int) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    run = subprocess.run(
        [sys.executable, "-m", "tests.fingerprint_process"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return run.stdout.splitlines()


def test_tortoise_fingerprints_are_identical_across_processes() -> None:
    runs = [_fingerprints(seed) for seed in (1, 2, 3, 4)]
    assert len(runs[0]) >= 8
    assert all(run == runs[0] for run in runs[1:]), runs
    assert all(len(fingerprint) < 120 for fingerprint in runs[0]), runs[0]
