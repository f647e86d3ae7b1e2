"""The app the gunicorn test runs in several worker processes (see test_multiprocess.py)."""

from __future__ import annotations

import os

from fastapi import FastAPI
from sqlalchemy import create_engine, text

from poolwatch import PoolWatch

engine = create_engine(f"sqlite:///{os.environ['POOLWATCH_TEST_DB']}", pool_size=5, max_overflow=10)
watch = PoolWatch()
app = FastAPI()
watch.instrument_app(app)
watch.instrument_sqlalchemy(engine, pool="main")


@app.get("/hit")
def hit() -> dict[str, int]:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"pid": os.getpid()}
