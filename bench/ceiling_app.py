"""The framework ceiling: a bare FastAPI app with one trivial JSON endpoint.

Served by the same uvicorn command line and driven by the same wrk as the booking service, it
shows what this machine, server and generator can do at best; every service figure is also
reported as a ratio to it. `async def` because nothing here blocks: it is the framework's best
case. `/ping-sync` is the same endpoint run in the thread pool (one hand-off, as the service's
PostgreSQL and SQLite-file work is).
"""

import time

from fastapi import FastAPI

app = FastAPI(title="bench ceiling")


@app.get("/ping")
async def ping() -> dict[str, str]:
    """A constant JSON object."""
    return {"status": "ok"}


@app.get("/ping-sync")
def ping_sync() -> dict[str, str]:
    """The same object from a sync route (thread pool), for comparison."""
    return {"status": "ok"}


@app.get("/busy")
async def busy() -> dict[str, str]:
    """Keeps the event loop busy for 3 ms, as the service's SQLite work does (bench.serving_check)."""
    until = time.perf_counter() + 0.003
    while time.perf_counter() < until:
        pass
    return {"status": "ok"}
