"""Locust users for poolwatch's load-test scenarios (one class per kind of traffic).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 HealthyUser

Usable against any app with the demo's routes; the runner picks the class per scenario.
Failures the scenario causes on purpose (500s of the error burst, 500s while the database
is down) are expected: they are reported by Locust but do not fail the run.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, between, task

__all__ = [
    "ErrorUser",
    "ExhaustionUser",
    "HealthyUser",
    "HeldIdleUser",
    "IOUser",
    "NPlusOneUser",
    "OutageUser",
    "SlowUser",
]


class HealthyUser(FastHttpUser):
    """Moderate, well-behaved traffic: prefetching list pages, lookups, a few writes."""

    wait_time = between(0.05, 0.2)

    @task(4)
    def posts(self) -> None:
        self.client.get("/posts")

    @task(4)
    def author(self) -> None:
        self.client.get(f"/authors/{random.randint(1, 10)}", name="/authors/{author_id}")

    @task(2)
    def comments(self) -> None:
        post = random.randint(1, 50)
        self.client.get(f"/posts/{post}/comments", name="/posts/{post_id}/comments")

    @task(1)
    def comment(self) -> None:
        post = random.randint(1, 50)
        self.client.post(f"/posts/{post}/comments", name="/posts/{post_id}/comments")


class ExhaustionUser(FastHttpUser):
    """More concurrent work than connections, each holding its connection for seconds."""

    wait_time = between(0.0, 0.1)

    @task
    def hold(self) -> None:
        with self.client.get("/load/hold?seconds=2.5", catch_response=True) as response:
            if response.status_code >= 500:  # timed out waiting: expected here
                response.success()


class HeldIdleUser(FastHttpUser):
    """Comments added through a moderation call: mostly with the transaction open across
    the call, some with the call made first (the control)."""

    wait_time = between(0.0, 0.1)

    @task(3)
    def reviewed(self) -> None:
        post = random.randint(1, 50)
        self.client.post(
            f"/posts/{post}/reviewed-comments", name="/posts/{post_id}/reviewed-comments"
        )

    @task(1)
    def checked(self) -> None:
        post = random.randint(1, 50)
        self.client.post(
            f"/posts/{post}/checked-comments", name="/posts/{post_id}/checked-comments"
        )


class SlowUser(FastHttpUser):
    """Slow statements (a second and more each), on a pool with room to spare."""

    wait_time = between(0.1, 0.3)

    @task
    def slow(self) -> None:
        self.client.get("/load/slow?seconds=1.2")


class NPlusOneUser(FastHttpUser):
    """The N+1 endpoint, over and over."""

    wait_time = between(0.05, 0.2)

    @task
    def nplusone(self) -> None:
        self.client.get("/posts/nplusone")


class ErrorUser(FastHttpUser):
    """Statements the database rejects, beside normal traffic."""

    wait_time = between(0.05, 0.2)

    @task(3)
    def error(self) -> None:
        with self.client.get("/load/error", catch_response=True) as response:
            if response.status_code == 500:
                response.success()

    @task(1)
    def normal(self) -> None:
        self.client.get("/posts")


class OutageUser(HealthyUser):
    """Healthy traffic that keeps going while the database is stopped and started."""

    def on_start(self) -> None:
        self.client.get("/authors")

    @task(4)
    def posts(self) -> None:
        with self.client.get("/posts", catch_response=True) as response:
            if response.status_code >= 500:  # the database is down: expected for a while
                response.success()


class _ShortStatementUser(FastHttpUser):
    """One short statement per request, back to back; a 5xx is a failure."""

    abstract = True
    wait_time = between(0.0, 0.02)
    path = ""

    @task
    def statement(self) -> None:
        with self.client.get(self.path, catch_response=True) as response:
            if response.status_code >= 500:
                response.failure(f"status {response.status_code}")


class CPUUser(_ShortStatementUser):
    """Short statements that compute in the database: more connections do not help."""

    path = "/load/cpu"


class IOUser(_ShortStatementUser):
    """Short statements that wait in the database: more connections help."""

    path = "/load/io"
