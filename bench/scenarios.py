"""Running one scenario against a running server: wrk load, server CPU and memory, the invariant.

Each function drives a server that bench.suite started and seeded, and returns what it measured
as a bench.record row: the framework ceiling, a service scenario, or the soak.
"""

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen, log
from bench.checks import ApiChecker, SqlChecker, verdict
from bench.record import (
    CeilingRow,
    Figures,
    LoadAverage,
    Ratio,
    Rss,
    ScenarioRow,
    ServerLog,
    Soak,
    SoakChunk,
)
from bench.server import RssSampler, Server

SOAK_CHUNK_SECONDS = 15


@dataclass
class Options:
    """What to run and how hard (bench.run's command line)."""

    quick: bool
    backends: list[str]
    history_backends: list[str]
    history: list[int]
    seconds: int
    warmup: int
    connections: int
    hot_connections: int
    users: int
    churn_rooms: int
    slots_per_room: int
    soak_requests: int
    soak_max_seconds: int
    soak_backend: str
    pg_url: str
    recover_seconds: int
    out: Path
    keep_logs: bool


@dataclass
class Measured:
    """One wrk run against a server, with the server's memory, CPU time and the load around it."""

    fig: Figures
    rss: Rss
    cpu_seconds: float
    load_before: float


def measure(server: Server, script: str, pool_file: Path, *, seconds: int, connections: int, **env: str) -> Measured:
    load, cpu = os.getloadavg()[0], server.cpu_seconds()
    with RssSampler(server) as rss:
        fig = loadgen.run_wrk(server.url, script, pool_file, seconds=seconds, connections=connections, **env)
    return Measured(fig, rss.summary(), server.cpu_seconds() - cpu, load)


def ceiling_row(server: Server, endpoint: str, pool_file: Path, connections: int, o: Options) -> CeilingRow:
    """The bare app's figures on `endpoint`, after the same warm-up as the scenarios get."""
    if o.warmup:
        loadgen.run_wrk(server.url, "get.lua", pool_file, seconds=o.warmup, connections=connections)
    m = measure(server, "get.lua", pool_file, seconds=o.seconds, connections=connections)
    return CeilingRow(
        **vars(m.fig),
        workers=server.workers,
        endpoint=endpoint,
        connections=connections,
        rss=m.rss,
        server_cpu_ms_per_request=_per_request(m, 3),
        load_average_1m=LoadAverage(before=round(m.load_before, 2)),
    )


def scenario_row(
    o: Options,
    *,
    backend: str,
    history: int,
    name: str,
    server: Server,
    checker: SqlChecker | ApiChecker,
    script: str,
    pool_file: Path,
    connections: int,
    ceiling: CeilingRow | None,
    settle: Callable[[], int] | None = None,
    **env: str,
) -> ScenarioRow:
    """Warm up, settle what the warm-up left, measure, let the server recover, check the invariant."""
    warm_stalled = False
    if o.warmup:
        warm = loadgen.run_wrk(server.url, script, pool_file, seconds=o.warmup, connections=connections, **env)
        warm_stalled = warm.requests == 0
        time.sleep(0.5)
    if warm_stalled:
        log(f"  {backend} {name}: the server stalled already in the warm-up; measuring it as it is")
        before = _snapshot(checker) if isinstance(checker, SqlChecker) else None
    else:
        if settle is not None and o.warmup:  # the warm-up left claims on these slots
            try:
                settled = settle()
                if settled:
                    log(f"  settled {settled} claims left by the previous run")
            except Exception as exc:
                log(f"  could not settle the claims left by the previous run: {exc}")
        before = _snapshot(checker)
    log_start = len(server.log_text())
    m = measure(server, script, pool_file, seconds=o.seconds, connections=connections, **env)
    load_after = round(os.getloadavg()[0], 2)
    time.sleep(0.5)  # let requests that were in flight when wrk stopped finish
    # A stalled server may take a while to answer again; the in-memory check needs it to.
    recovered = server.wait_answering("/health", o.recover_seconds)
    after = _snapshot(checker) if recovered is not None or isinstance(checker, SqlChecker) else None
    server_log = server.log_text()[log_start:]
    m.rss.hwm_sum_mb = round(server.hwm_kb() / 1024, 1)
    return ScenarioRow(
        **vars(m.fig),
        server_cpu_ms_per_request=_per_request(m, 2),
        server_cpu_share=round(m.cpu_seconds / m.fig.seconds / (os.cpu_count() or 1), 2),
        load_average_1m=LoadAverage(before=round(m.load_before, 2), after=load_after),
        health_answered_after_s=recovered,
        backend=backend,
        workers=server.workers,
        history_rows=history,
        scenario=name,
        connections=connections,
        rss=m.rss,
        server_log=ServerLog(
            tracebacks=server_log.count("Traceback"),
            database_is_locked=server_log.count("database is locked"),
            excerpt=_first_traceback(server_log),
        ),
        invariant=_verdict(before, after, m.fig.counts, connections) | {"method": checker.method},
        ratio_to_ceiling=_ratios(m.fig, ceiling),
    )


def soak(o: Options, backend: str, server: Server, checker: SqlChecker | ApiChecker, pool_file: Path) -> Soak:
    """Hold churn in 15 s chunks, up to soak_requests or soak_max_seconds; RSS after each chunk."""
    chunks: list[SoakChunk] = []
    before = _snapshot(checker)
    counts: dict[str, int] = {}
    started = time.monotonic()
    total = 0
    while total < o.soak_requests and time.monotonic() - started < o.soak_max_seconds:
        fig = loadgen.run_wrk(
            server.url,
            "holds.lua",
            pool_file,
            seconds=SOAK_CHUNK_SECONDS,
            connections=o.connections,
            BENCH_CONFIRM="0.5",
        )
        total += fig.requests
        for k, v in fig.counts.items():
            counts[k] = counts.get(k, 0) + v
        chunks.append(SoakChunk(total, fig.rps, round(server.rss_kb() / 1024, 1), fig.server_5xx))
    time.sleep(1.0)
    server.wait_answering("/health", o.recover_seconds)
    after = _snapshot(checker)
    first, peak = chunks[0].rss_mb, max(c.rss_mb for c in chunks)
    return Soak(
        backend=backend,
        workers=server.workers,
        requests=total,
        seconds=round(time.monotonic() - started, 1),
        chunks=chunks,
        rss_after_first_chunk_mb=first,
        rss_end_mb=chunks[-1].rss_mb,
        rss_peak_mb=peak,
        growth_pct=round(100 * (peak - first) / first, 1) if first else None,
        server_5xx=sum(c.server_5xx for c in chunks),
        invariant=_verdict(before, after, counts, o.connections * len(chunks)),
    )


def _per_request(m: Measured, digits: int) -> float | None:
    return round(1000 * m.cpu_seconds / m.fig.requests, digits) if m.fig.requests else None


def _snapshot(checker: SqlChecker | ApiChecker) -> dict[str, Any] | None:
    try:
        return checker.snapshot()
    except Exception as exc:  # the in-memory check goes through the server, which may not answer
        log(f"  invariant check could not run: {exc}")
        return None


def _verdict(
    before: dict[str, Any] | None, after: dict[str, Any] | None, counts: dict[str, int], tolerance: int
) -> dict[str, Any]:
    if before is None or after is None:
        return {"result": "UNCHECKED", "reason": "the server did not answer the check"}
    return verdict(before, after, counts, tolerance)


def _first_traceback(text_: str) -> str | None:
    at = text_.find("Traceback")
    return text_[at : at + 2000] if at >= 0 else None


def _ratios(fig: Figures, ceiling: CeilingRow | None) -> Ratio:
    if not ceiling:
        return Ratio(rps=None, p99=None)
    return Ratio(
        rps=round(fig.rps / ceiling.rps, 3) if ceiling.rps else None,  # 0.0 when stalled
        p99=round(fig.latency_ms.p99 / ceiling.latency_ms.p99, 2) if ceiling.latency_ms.p99 and fig.requests else None,
    )
