"""The ``/metrics`` text passes ``promtool check metrics``, Prometheus's own linter.

promtool flags what a Prometheus user would trip over: counters without ``_total``, a
gauge named ``*_count``, units missing from names, malformed HELP/TYPE lines.
"""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tortoise import Tortoise, fields
from tortoise.models import Model
from tortoise.transactions import in_transaction

import poolwatch


class Author(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=50)

    class Meta:
        app = "models"


async def promtool_check_metrics(promtool: str, exposition: bytes) -> tuple[int, str]:
    """Exit status and output (stdout and stderr) of ``promtool check metrics < exposition``."""
    process = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(exposition), timeout=30)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def scrape_after_workload() -> bytes:
    """The exposition of a PoolWatch that saw inserts, selects and a transaction."""
    watch = poolwatch.PoolWatch()
    watch.instrument_tortoise()
    try:
        await Tortoise.init(db_url="sqlite://:memory:", modules={"models": [__name__]})
        await Tortoise.generate_schemas()
        with poolwatch.scope("job"):
            await Author.create(name="a")
            await asyncio.gather(*(Author.filter(name="a").first() for _ in range(5)))
            async with in_transaction():
                await Author.all()
            await Author.bulk_create([Author(name=f"n{i}") for i in range(3)])
        return generate_latest(watch.registry)
    finally:
        await Tortoise.close_connections()
        watch.uninstrument()


async def test_exposition_passes_promtool_lint(promtool: str) -> None:
    exposition = await scrape_after_workload()

    # The lint is only worth something if the scrape holds labelled series to lint.
    job_queries = [
        sample
        for family in text_string_to_metric_families(exposition.decode())
        for sample in family.samples
        if sample.name == "db_client_operation_duration_seconds_count"
        and sample.labels.get("route") == "job"
    ]
    assert sum(sample.value for sample in job_queries) >= 7, exposition.decode()

    status, problems = await promtool_check_metrics(promtool, exposition)
    assert (status, problems) == (0, ""), f"promtool check metrics:\n{problems}"


async def test_promtool_reports_lint_problems(promtool: str) -> None:
    # Guards the test above against passing vacuously (promtool not reading stdin, or
    # exiting 0 on problems).
    bad = b"# HELP queries_count Queries.\n# TYPE queries_count gauge\nqueries_count 1\n"

    status, problems = await promtool_check_metrics(promtool, bad)

    assert status != 0
    assert "queries_count" in problems
