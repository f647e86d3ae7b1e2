"""The step load of the autosize scenario, as a Locust load shape (loaded only for it).

    locust -f loadtests/locustfile.py,loadtests/step_shape.py IOUser

Users step 5 -> 60 -> 5; each step lasts POOLWATCH_LOADTEST_STEP seconds (default 20).
"""

from __future__ import annotations

import os

from locust import LoadTestShape

__all__ = ["StepShape"]


class StepShape(LoadTestShape):
    """Users stepping up and down: 5, 60, 5 (for the autosize scenario).

    The runner scales the step length with POOLWATCH_LOADTEST_STEP (seconds).
    """

    steps = ((5, 5), (60, 30), (5, 5))
    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        step = float(os.environ.get("POOLWATCH_LOADTEST_STEP", "20"))
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        for index, (users, rate) in enumerate(self.steps):
            if elapsed < step * (index + 1):
                return users, rate
        return None
