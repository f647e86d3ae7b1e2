"""The worker count of a server command line: several need multiprocess mode."""

from __future__ import annotations

import pytest

from poolwatch.launch.workers import python_flags, worker_count


@pytest.mark.parametrize(
    ("argv", "environ", "count"),
    [
        ("uvicorn app:app", {}, None),
        ("uvicorn app:app --workers 2", {}, 2),
        ("uvicorn --workers=3 app:app", {}, 3),
        ("uvicorn app:app", {"WEB_CONCURRENCY": "4"}, 4),
        ("uvicorn app:app --workers 1", {"WEB_CONCURRENCY": "4"}, 1),  # the flag wins
        ("uvicorn app:app -w 2", {}, None),  # uvicorn has no -w
        ("gunicorn -k uvicorn.workers.UvicornWorker -w 2 app:app", {}, 2),
        ("gunicorn -w4 app:app", {}, 4),
        ("gunicorn --workers 5 app:app", {}, 5),
        ("gunicorn app:app", {"GUNICORN_CMD_ARGS": "--bind :80 -w 3"}, 3),
        ("gunicorn app:app", {"WEB_CONCURRENCY": "2"}, 2),
        ("/venv/bin/hypercorn -w 2 app:app", {}, 2),
        ("hypercorn app:app", {"WEB_CONCURRENCY": "2"}, None),  # hypercorn ignores it
        ("fastapi run app.py --workers 4", {}, 4),
        ("python -m uvicorn app:app --workers 2", {}, 2),
        ("python3.11 -X dev -m gunicorn -w 2 app:app", {}, 2),
        ("python -m app --workers 2", {}, None),  # the app's own option, not a server's
        ("python -m app", {"WEB_CONCURRENCY": "2"}, 2),  # uvicorn.run() reads it
        ("uvicorn app:app -- --workers 2", {}, None),
    ],
)
def test_worker_count(argv: str, environ: dict[str, str], count: int | None) -> None:
    assert worker_count(argv.split(), environ) == count


def test_python_flags() -> None:
    assert python_flags(["python3", "-I", "-X", "dev", "-m", "app"]) == ["-I", "-X", "dev"]
    assert python_flags(["uvicorn", "-I"]) == []
