"""Prometheus metrics: what the service counts, and their exposition for GET /metrics.

With PROMETHEUS_MULTIPROC_DIR set (required for `--workers`), every worker writes its values to
files there and a scrape of any worker adds up all of them; without it, each process keeps its own.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# No `_created` series beside every counter: nothing here reads them. (Unannotated upstream.)
disable_created_metrics()  # type: ignore[no-untyped-call]

# Requests by route template (`/holds/{hold_id}`, never the raw path), method and status.
REQUESTS = Counter("booking_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "booking_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response (a stream: its whole life)",
    ["method", "route", "status"],
)
HOLDS_CREATED = Counter("booking_holds_created", "Holds created (POST /holds answered 201)")
HOLDS_REFUSED = Counter("booking_holds_refused", "POST /holds answered 409, by problem code", ["code"])
HOLDS_CONFIRMED = Counter("booking_holds_confirmed", "Confirm calls that returned the booking (a repeat counts again)")
HOLDS_LAPSED_AT_CONFIRM = Counter(
    "booking_holds_lapsed_at_confirm", "Confirm calls refused because the hold had run out (410 HOLD_EXPIRED)"
)
IDEMPOTENT_REPLAYS = Counter("booking_idempotent_replays", "Requests answered from a stored Idempotency-Key response")
RATE_LIMITED = Counter("booking_rate_limited", "Requests refused with 429 RATE_LIMITED, by limit", ["limit"])
# livesum: a scrape reports the sum over the workers alive now.
POOL_CONNECTIONS = Gauge(
    "booking_db_pool_connections",
    "PostgreSQL connection pool, summed over workers: size (kept open), checked_out (in use), overflow (beyond size)",
    ["state"],
    multiprocess_mode="livesum",
)


# Each (method, route, status)'s two series, looked up once: `labels()` checks and joins its
# values under a lock on every call. As bounded as the series themselves.
_http_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def http_series(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    """The request counter and latency histogram of one method, route template and status."""
    key = (method, route, status)
    series = _http_series.get(key)
    if series is None:
        series = _http_series[key] = (REQUESTS.labels(method, route, status), LATENCY.labels(method, route, status))
    return series


def multiprocess() -> bool:
    """Whether values are shared between worker processes through PROMETHEUS_MULTIPROC_DIR."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def observe_pool(pool_state: dict[str, object]) -> None:
    """Record this worker's pool from `Database.pool_state()` (nothing for SQLite, which has no pool to watch)."""
    pool = pool_state.get("pool")
    if not isinstance(pool, dict):
        return
    for state in ("size", "checked_out", "overflow"):
        value = pool.get(state)
        if isinstance(value, int):
            POOL_CONNECTIONS.labels(state).set(value)


def exposition() -> tuple[bytes, str]:
    """Every metric in the Prometheus text format, and its content type."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # its __init__ is unannotated upstream
        return _generate_latest(registry), CONTENT_TYPE_LATEST
    return _generate_latest(REGISTRY), CONTENT_TYPE_LATEST
