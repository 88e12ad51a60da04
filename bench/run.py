"""The benchmark of issue 4: what users feel, as ratios to the framework ceiling.

    .venv/bin/python -m bench.run            # full run (~12-15 min on 2 cores)
    .venv/bin/python -m bench.run --quick    # < 1 min: ceiling, in-memory SQLite, 10k history on a file

Starts `uvicorn main:app --no-access-log --loop asyncio --http serving:HttpProtocol` on 127.0.0.1
(one worker for in-memory SQLite, two for the SQLite file and PostgreSQL backends), seeds it
over HTTP, drives it with wrk + Lua (bench/lua/), checks the no-double-booking invariant after
every scenario, prints a table and writes JSON (bench/results/). Needs the Debian package `wrk`;
PostgreSQL is optional (skipped with a note when it does not answer at --pg-url).
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import loadgen
from bench.checks import ApiChecker, SqlChecker, verdict
from bench.seed import Api, Pool, insert_history, seed, settle_claims
from bench.server import ROOT, RssSampler, Server, stop_all
from serving import uvicorn_command

RESULTS = Path(__file__).resolve().parent / "results"
CHURN, HOT, LISTING = "hold churn", "hot slot", "listing"
MEMORY, FILE, POSTGRES = "memory", "sqlite-file", "postgresql"
WORKERS = {MEMORY: 1, FILE: 2, POSTGRES: 2}
HOLD_TTL_SECONDS = "3600"  # no hold set up for a scenario expires during the run


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
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


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s scenarios, in-memory SQLite, 10k history on a file")
    parser.add_argument("--backends", help=f"comma list of {MEMORY},{FILE},{POSTGRES} (scenarios 1-3)")
    parser.add_argument("--history-backends", help=f"comma list of {FILE},{POSTGRES} for history growth")
    parser.add_argument("--history", help="comma list of historical hold counts, e.g. 10000,100000,1000000")
    parser.add_argument("--seconds", type=int, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=int, help="warm-up seconds before each measurement")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for hold churn and listing")
    parser.add_argument("--hot-connections", type=int, default=64, help="wrk connections for the hot slot")
    parser.add_argument("--users", type=int, help="users created over HTTP")
    parser.add_argument("--slots-per-room", type=int, help="30-minute slots in each of the 5 churn rooms")
    parser.add_argument("--soak-requests", type=int, help="hold churn until this many requests (memory target)")
    parser.add_argument("--soak-max-seconds", type=int, help="... or until this many seconds")
    parser.add_argument("--soak-backend", default=POSTGRES, help="backend of the soak (falls back to sqlite-file)")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--recover-seconds", type=int, help="how long to wait for a stalled server to answer again")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/latest.json or quick.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs in bench/results/logs/")
    a = parser.parse_args(argv)
    quick = a.quick

    def pick(value: Any, quick_value: Any, full_value: Any) -> Any:
        return value if value is not None else (quick_value if quick else full_value)

    def names(value: str | None, default: str) -> list[str]:
        return [n.strip() for n in (value if value is not None else default).split(",") if n.strip()]

    options = Options(
        quick=quick,
        backends=names(a.backends, MEMORY if quick else f"{MEMORY},{FILE},{POSTGRES}"),
        history_backends=names(a.history_backends, FILE if quick else f"{FILE},{POSTGRES}"),
        history=[int(n) for n in names(a.history, "10000" if quick else "10000,100000,1000000")],
        seconds=pick(a.seconds, 3, 10),
        warmup=pick(a.warmup, 0, 2),
        connections=a.connections,
        hot_connections=a.hot_connections,
        users=pick(a.users, 50, 200),
        churn_rooms=5,
        slots_per_room=pick(a.slots_per_room, 20, 100),
        soak_requests=pick(a.soak_requests, 0, 1_000_000),
        soak_max_seconds=pick(a.soak_max_seconds, 0, 120),
        soak_backend=a.soak_backend,
        pg_url=a.pg_url.rstrip("/"),
        recover_seconds=pick(a.recover_seconds, 5, 60),
        out=a.out or RESULTS / ("quick.json" if quick else "latest.json"),
        keep_logs=a.keep_logs,
    )
    for name in options.backends + options.history_backends:
        if name not in WORKERS:
            parser.error(f"unknown backend {name!r}")
    if MEMORY in options.history_backends:
        parser.error("in-memory SQLite cannot be pre-filled from outside the server process; no history there")
    return options


# --- databases ---------------------------------------------------------------------------------------


class Databases:
    """Fresh databases for each server: SQLite files in a temp dir, scratch PostgreSQL databases."""

    def __init__(self, pg_url: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.pg_url = pg_url
        self.pg_databases: list[str] = []
        self.pg_error: str | None = None

    def postgres_available(self) -> bool:
        try:
            engine = create_engine(f"{self.pg_url.replace('postgresql://', 'postgresql+psycopg://')}/postgres")
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            return True
        except Exception as exc:
            self.pg_error = str(exc).splitlines()[0]
            return False

    def _admin(self, sql: str) -> None:
        engine = create_engine(
            f"{self.pg_url.replace('postgresql://', 'postgresql+psycopg://')}/postgres", isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
        engine.dispose()

    def new(self, backend: str) -> str:
        """A DATABASE_URL for a new, empty database of this backend."""
        tag = uuid.uuid4().hex[:10]
        if backend == MEMORY:
            return "sqlite:///:memory:"
        if backend == FILE:
            return f"sqlite:///{self.tmp / f'bench-{tag}.db'}"
        name = f"bench_{tag}"
        self._admin(f"CREATE DATABASE {name}")
        self.pg_databases.append(name)
        return f"{self.pg_url}/{name}"

    def drop(self, url: str) -> None:
        if url.startswith("postgresql"):
            name = url.rsplit("/", 1)[1]
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            self.pg_databases.remove(name)
        elif url.startswith("sqlite:///") and ":memory:" not in url:
            for suffix in ("", "-wal", "-shm"):
                Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)

    def cleanup(self) -> None:
        for name in list(self.pg_databases):
            try:
                self.drop(f"{self.pg_url}/{name}")
            except Exception as exc:
                log(f"could not drop scratch database {name}: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- one benchmark run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.admin_token = secrets.token_urlsafe(24)
        self.dbs = Databases(options.pg_url)
        self.logs = RESULTS / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work = self.dbs.tmp
        self.ceiling: dict[tuple[int, int], dict[str, Any]] = {}
        self.ceiling_rows: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.soak: dict[str, Any] | None = None
        self.notes: list[str] = []
        self.failures: list[str] = []

    # servers

    def server(self, app: str, workers: int, env: dict[str, str], label: str) -> Server:
        return Server(app=app, env=env, workers=workers, log_path=self.logs / f"{label}-{uuid.uuid4().hex[:6]}.log")

    def service(self, backend: str, url: str) -> Server:
        env = {
            "DATABASE_URL": url,
            "ADMIN_TOKEN": self.admin_token,
            "SEED_DEMO_DATA": "false",
            "HOLD_TTL_SECONDS": HOLD_TTL_SECONDS,
        }
        return self.server("main:app", WORKERS[backend], env, backend).start("/health")

    # the ceiling

    def measure_ceiling(self, workers: int, connection_counts: list[int]) -> None:
        log(f"ceiling: bare FastAPI, {workers} worker(s)")
        server = self.server("bench.ceiling_app:app", workers, {}, f"ceiling-{workers}w").start("/ping")
        try:
            endpoints = ["/ping"] + ([] if self.o.quick or workers > 1 else ["/ping-sync"])
            for endpoint in endpoints:
                pool_file = Pool().write(self.work / "ceiling.pool", paths=[endpoint])
                for conns in connection_counts:
                    if endpoint != "/ping" and conns != self.o.connections:
                        continue
                    if self.o.warmup:
                        loadgen.run_wrk(server.url, "get.lua", pool_file, seconds=self.o.warmup, connections=conns)
                    load, cpu = os.getloadavg()[0], server.cpu_seconds()
                    with RssSampler(server) as rss:
                        fig = loadgen.run_wrk(
                            server.url, "get.lua", pool_file, seconds=self.o.seconds, connections=conns
                        )
                    cpu = server.cpu_seconds() - cpu
                    fig |= {
                        "workers": workers,
                        "endpoint": endpoint,
                        "connections": conns,
                        "rss": rss.summary(),
                        "server_cpu_ms_per_request": round(1000 * cpu / fig["requests"], 3)
                        if fig["requests"]
                        else None,
                        "load_average_1m": {"before": round(load, 2)},
                    }
                    self.ceiling_rows.append(fig)
                    if endpoint == "/ping":
                        self.ceiling[(workers, conns)] = fig
        finally:
            server.stop()

    # scenarios

    def scenario(
        self,
        *,
        backend: str,
        history: int,
        name: str,
        server: Server,
        checker: SqlChecker | ApiChecker,
        script: str,
        pool_file: Path,
        connections: int,
        seconds: int | None = None,
        warmup: bool = True,
        settle: Callable[[], int] | None = None,
        **env: str,
    ) -> dict[str, Any]:
        seconds = seconds or self.o.seconds
        warm_stalled = False
        if warmup and self.o.warmup:
            warm = loadgen.run_wrk(server.url, script, pool_file, seconds=self.o.warmup, connections=connections, **env)
            warm_stalled = warm["requests"] == 0
            time.sleep(0.5)
        if warm_stalled:
            log(f"  {backend} {name}: the server stalled already in the warm-up; measuring it as it is")
            before = _snapshot(checker) if isinstance(checker, SqlChecker) else None
        else:
            if settle is not None and warmup and self.o.warmup:  # the warm-up left claims on these slots
                try:
                    settled = settle()
                    if settled:
                        log(f"  settled {settled} claims left by the previous run")
                except Exception as exc:
                    log(f"  could not settle the claims left by the previous run: {exc}")
            before = _snapshot(checker)
        log_start = len(server.log_text())
        load_before, cpu_before = os.getloadavg()[0], server.cpu_seconds()
        with RssSampler(server) as rss:
            fig = loadgen.run_wrk(server.url, script, pool_file, seconds=seconds, connections=connections, **env)
        cpu = server.cpu_seconds() - cpu_before
        fig["server_cpu_ms_per_request"] = round(1000 * cpu / fig["requests"], 2) if fig["requests"] else None
        fig["server_cpu_share"] = round(cpu / fig["seconds"] / (os.cpu_count() or 1), 2)
        fig["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
        time.sleep(0.5)  # let requests that were in flight when wrk stopped finish
        # A stalled server may take a while to answer again; the in-memory check needs it to.
        recovered = server.wait_answering("/health", self.o.recover_seconds)
        fig["health_answered_after_s"] = recovered
        after = _snapshot(checker) if recovered is not None or isinstance(checker, SqlChecker) else None
        server_log = server.log_text()[log_start:]
        ceiling = self.ceiling.get((server.workers, connections))
        fig |= {
            "backend": backend,
            "workers": server.workers,
            "history_rows": history,
            "scenario": name,
            "connections": connections,
            "rss": rss.summary() | {"hwm_sum_mb": round(server.hwm_kb() / 1024, 1)},
            "server_log": {
                "tracebacks": server_log.count("Traceback"),
                "database_is_locked": server_log.count("database is locked"),
                "excerpt": _first_traceback(server_log),
            },
            "invariant": _verdict(before, after, fig["counts"], connections) | {"method": checker.method},
            "ratio_to_ceiling": _ratios(fig, ceiling),
        }
        if fig["invariant"]["result"] != "PASS":
            self.failures.append(
                f"invariant {fig['invariant']['result']}: {backend} {name} history={history}: {fig['invariant']}"
            )
        if fig["stalled"]:
            self.failures.append(
                f"stall: {backend} {name} history={history}: {fig['requests']} responses to {connections} clients in "
                f"{fig['seconds']}s, {fig['silent_seconds']} whole second(s) without any response, about "
                f"{fig['stuck_clients']} of {connections} clients waiting on an unanswered request (req/s x mean "
                f"latency = {fig['clients_answered']}); /health answered again after "
                f"{recovered if recovered is not None else f'more than {self.o.recover_seconds}'}s"
            )
        if fig["server_5xx"] or fig["server_log"]["tracebacks"]:
            self.failures.append(
                f"5xx: {backend} {name} history={history}: {fig['server_5xx']} responses, "
                f"{fig['server_log']['tracebacks']} tracebacks; samples {fig['samples'][:2]}"
            )
        self.rows.append(fig)
        log(
            f"  {backend:<11} {name:<10} history={history:<8} {fig['rps']:>8.1f} req/s  "
            f"p99 {fig['latency_ms']['p99']:.1f} ms  5xx {fig['server_5xx']}  invariant {fig['invariant']['result']}"
        )
        return fig

    def pool_files(self, pool: Pool, tag: str) -> dict[str, Path]:
        return {
            CHURN: pool.write(self.work / f"{tag}-churn.pool", slots=pool.churn_slots),
            HOT: pool.write(self.work / f"{tag}-hot.pool", slots=pool.hot_slots),
            LISTING: pool.write(self.work / f"{tag}-listing.pool", paths=[pool.listing_path]),
        }

    def seed(self, server: Server) -> tuple[Api, Pool]:
        api = Api(server.url, self.admin_token)
        started = time.monotonic()
        pool = seed(api, users=self.o.users, churn_rooms=self.o.churn_rooms, slots_per_room=self.o.slots_per_room)
        log(f"  seeded {len(pool.users)} users, {len(pool.all_slots())} slots in {time.monotonic() - started:.1f}s")
        return api, pool

    def checker(self, backend: str, url: str, api: Api, pool: Pool) -> SqlChecker | ApiChecker:
        return ApiChecker(api, pool) if backend == MEMORY else SqlChecker(url)

    @contextmanager
    def seeded_service(self, backend: str) -> Iterator[tuple[Server, Api, Pool, SqlChecker | ApiChecker]]:
        """A fresh database and server for `backend`, seeded, with its invariant checker; all removed after."""
        url = self.dbs.new(backend)
        server = self.service(backend, url)
        checker: SqlChecker | ApiChecker | None = None
        try:
            api, pool = self.seed(server)
            checker = self.checker(backend, url, api, pool)
            yield server, api, pool, checker
        finally:
            server.stop()
            if checker:
                checker.close()
            self.dbs.drop(url)

    def holds_scenario(
        self, name: str, pool_file: Path, connections: int, api: Api, pool: Pool, slots: list[str], **common: Any
    ) -> dict[str, Any]:
        """Hold churn (or the hot slot) on `slots`: holds, half confirmed then cancelled, half released."""
        return self.scenario(
            name=name,
            script="holds.lua",
            pool_file=pool_file,
            connections=connections,
            settle=lambda: settle_claims(api, pool, slots),
            BENCH_CONFIRM="0.5",
            **common,
        )

    def run_backend(self, backend: str) -> None:
        log(f"backend {backend}: {WORKERS[backend]} worker(s)")
        with self.seeded_service(backend) as (server, api, pool, checker):
            files = self.pool_files(pool, backend)
            common = {"backend": backend, "history": 0, "server": server, "checker": checker}
            # The hot slot goes last: if the service stalls under 64 clients, nothing else is spoiled.
            self.holds_scenario(CHURN, files[CHURN], self.o.connections, api, pool, pool.churn_slots, **common)
            self.scenario(
                name=LISTING, script="get.lua", pool_file=files[LISTING], connections=self.o.connections, **common
            )
            self.holds_scenario(HOT, files[HOT], self.o.hot_connections, api, pool, pool.hot_slots, **common)
        if backend == self.soak_backend():
            self.run_soak(backend)

    def run_history(self, backend: str, rows: int) -> None:
        log(f"history {backend}: {rows:,} historical holds")
        url = self.dbs.new(backend)
        checker: SqlChecker | None = None
        try:
            server = self.service(backend, url)
            try:
                _, pool = self.seed(server)
            finally:
                server.stop()
            info = insert_history(url, pool, rows)
            log(f"  inserted {rows:,} dead holds in {info['seconds']}s ({info['holds_in_table']:,} rows in holds)")
            server = self.service(backend, url)
            api = Api(server.url, self.admin_token)
            files = self.pool_files(pool, f"{backend}-{rows}")
            checker = SqlChecker(url)
            common = {"backend": backend, "history": rows, "server": server, "checker": checker}
            try:
                churn = self.holds_scenario(
                    CHURN, files[CHURN], self.o.connections, api, pool, pool.churn_slots, **common
                )
                listing = self.scenario(
                    name=LISTING, script="get.lua", pool_file=files[LISTING], connections=self.o.connections, **common
                )
                churn["history_seed"] = listing["history_seed"] = info
            finally:
                server.stop()
        finally:
            if checker:
                checker.close()
            self.dbs.drop(url)

    def soak_backend(self) -> str | None:
        if not self.o.soak_requests or not self.o.soak_max_seconds:
            return None
        for candidate in (self.o.soak_backend, FILE, MEMORY):
            if candidate in self.o.backends:
                return candidate
        return None

    def run_soak(self, backend: str) -> None:
        """Hold churn on a fresh server in 15 s chunks, up to soak_requests or soak_max_seconds."""
        log(f"soak: hold churn on {backend} up to {self.o.soak_requests:,} requests / {self.o.soak_max_seconds}s")
        with self.seeded_service(backend) as (server, _, pool, checker):
            self._soak(server, checker, self.pool_files(pool, f"{backend}-soak")[CHURN], backend)

    def _soak(self, server: Server, checker: SqlChecker | ApiChecker, pool_file: Path, backend: str) -> None:
        chunks: list[dict[str, Any]] = []
        before = _snapshot(checker)
        counts: dict[str, int] = {}
        started = time.monotonic()
        total = 0
        while total < self.o.soak_requests and time.monotonic() - started < self.o.soak_max_seconds:
            fig = loadgen.run_wrk(
                server.url, "holds.lua", pool_file, seconds=15, connections=self.o.connections, BENCH_CONFIRM="0.5"
            )
            total += fig["requests"]
            for k, v in fig["counts"].items():
                counts[k] = counts.get(k, 0) + v
            chunks.append(
                {
                    "requests_so_far": total,
                    "rps": fig["rps"],
                    "rss_mb": round(server.rss_kb() / 1024, 1),
                    "server_5xx": fig["server_5xx"],
                }
            )
        time.sleep(1.0)
        server.wait_answering("/health", self.o.recover_seconds)
        after = _snapshot(checker)
        first, last = chunks[0]["rss_mb"], chunks[-1]["rss_mb"]
        peak = max(c["rss_mb"] for c in chunks)
        self.soak = {
            "backend": backend,
            "workers": server.workers,
            "requests": total,
            "seconds": round(time.monotonic() - started, 1),
            "chunks": chunks,
            "rss_after_first_chunk_mb": first,
            "rss_end_mb": last,
            "rss_peak_mb": peak,
            "growth_pct": round(100 * (peak - first) / first, 1) if first else None,
            "server_5xx": sum(c["server_5xx"] for c in chunks),
            "invariant": _verdict(before, after, counts, self.o.connections * len(chunks)),
        }
        log(
            f"  soak: {total:,} requests, RSS {first} -> {last} MB (peak {peak}), invariant "
            f"{self.soak['invariant']['result']}"
        )

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        backends = list(self.o.backends)
        history_backends = list(self.o.history_backends)
        if POSTGRES in backends + history_backends and not self.dbs.postgres_available():
            self.notes.append(f"postgresql skipped: not reachable at {self.o.pg_url} ({self.dbs.pg_error})")
            backends = [b for b in backends if b != POSTGRES]
            history_backends = [b for b in history_backends if b != POSTGRES]
        self.o.backends, self.o.history_backends = backends, history_backends
        if self.o.history and history_backends:
            self.notes.append(
                "history growth runs on " + ", ".join(history_backends) + " only: an in-memory SQLite database "
                "lives inside the server process and cannot be pre-filled from outside it"
            )
        # The ceiling under exactly the settings the scenarios use: workers x connections.
        needed: dict[int, set[int]] = {}
        for b in backends:
            needed.setdefault(WORKERS[b], set()).update({self.o.connections, self.o.hot_connections})
        for b in history_backends if self.o.history else []:
            needed.setdefault(WORKERS[b], set()).add(self.o.connections)
        if self.soak_backend():
            needed.setdefault(WORKERS[self.soak_backend() or MEMORY], set()).add(self.o.connections)
        for workers in sorted(needed):
            self.measure_ceiling(workers, sorted(needed[workers]))
        for backend in backends:
            self.run_backend(backend)
        for backend in history_backends:
            for rows in self.o.history:
                self.run_history(backend, rows)
        return self.report(time.monotonic() - started)

    # results

    def report(self, elapsed: float) -> dict[str, Any]:
        empty = {(r["backend"], r["scenario"]): r for r in self.rows if r["history_rows"] == 0}
        for r in self.rows:
            base = empty.get((r["backend"], r["scenario"]))
            if r["history_rows"] and base:
                r["ratio_to_empty"] = {"rps": round(r["rps"] / base["rps"], 3) if base["rps"] else None}
        return {
            "meta": _meta(self.o, elapsed),
            "ceiling": self.ceiling_rows,
            "scenarios": self.rows,
            "soak": self.soak,
            "targets": targets(self.rows, self.soak, self.o),
            "notes": self.notes,
            "failures": self.failures,
        }


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


def _ratios(fig: dict[str, Any], ceiling: dict[str, Any] | None) -> dict[str, float | None]:
    if not ceiling:
        return {"rps": None, "p99": None}
    return {
        "rps": round(fig["rps"] / ceiling["rps"], 3) if ceiling["rps"] else None,  # 0.0 when stalled
        "p99": round(fig["latency_ms"]["p99"] / ceiling["latency_ms"]["p99"], 2)
        if ceiling["latency_ms"]["p99"] and fig["requests"]
        else None,
    }


def _git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ".", ":!bench", ":!tests/test_bench.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return out.stdout.strip() + ("+uncommitted changes" if dirty else "")


def _meta(o: Options, elapsed: float) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "elapsed_seconds": round(elapsed, 1),
        "project_commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        },
        "load_generator": loadgen.wrk_version() + " (1 thread, Lua scripts in bench/lua/)",
        "server": " ".join(uvicorn_command("<app>", 0, 2)).replace("--port 0", "--port <free>"),
        "settings": {"HOLD_TTL_SECONDS": HOLD_TTL_SECONDS, "SEED_DEMO_DATA": "false"},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(o).items()},
    }


# --- targets of issue 4 -----------------------------------------------------------------------------------


def targets(rows: list[dict[str, Any]], soak: dict[str, Any] | None, o: Options) -> list[dict[str, Any]]:
    """Each target of issue 4, MET / MISSED / n/a, with the figures it was judged on."""
    out: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, figures: str) -> None:
        out.append(
            {"target": name, "result": "n/a" if met is None else ("MET" if met else "MISSED"), "figures": figures}
        )

    def find(backend: str, scenario: str, history: int = 0) -> dict[str, Any] | None:
        return next(
            (r for r in rows if (r["backend"], r["scenario"], r["history_rows"]) == (backend, scenario, history)), None
        )

    churn = find(MEMORY, CHURN)
    ratio = churn and churn["ratio_to_ceiling"]["rps"]
    add(
        "hold churn on in-memory SQLite >= 0.5x ceiling req/s",
        None if ratio is None else ratio >= 0.5,
        f"{ratio}x" if ratio is not None else "not run",
    )
    for backend in (MEMORY, FILE, POSTGRES):
        r = find(backend, LISTING)
        if r:
            rr, pr = r["ratio_to_ceiling"]["rps"], r["ratio_to_ceiling"]["p99"]
            add(
                f"listing on {backend}: >= 0.4x ceiling req/s and p99 < 4x ceiling p99",
                rr is not None and pr is not None and rr >= 0.4 and pr < 4,
                f"{rr}x req/s, p99 {pr}x",
            )
    for backend in (FILE, POSTGRES):
        levels = sorted({r["history_rows"] for r in rows if r["backend"] == backend and r["history_rows"]})
        if not levels:
            continue
        top = levels[-1]
        parts, met = [], True
        for scenario in (CHURN, LISTING):
            r = find(backend, scenario, top)
            ratio_e = r and r.get("ratio_to_empty", {}).get("rps")
            parts.append(f"{scenario} {ratio_e}x of empty" if ratio_e is not None else f"{scenario}: no empty run")
            met = met and ratio_e is not None and ratio_e >= 0.8
        has_base = all(find(backend, s) for s in (CHURN, LISTING))
        label = f"history {top:,} rows on {backend}: throughput >= 0.8x empty"
        add(
            label + ("" if top >= 1_000_000 else " (target is at 1M rows)"), met if has_base else None, "; ".join(parts)
        )
    for backend in (MEMORY, FILE, POSTGRES):
        r = find(backend, HOT)
        if r:
            locked = r["server_log"]["database_is_locked"] + sum("database is locked" in s for s in r["samples"])
            p99 = r["latency_ms"]["p99"]
            add(
                f"hot slot on {backend} ({r['connections']} clients): 0 5xx, 0 'database is locked', p99 < 100 ms",
                r["server_5xx"] == 0 and locked == 0 and p99 < 100 and not r["stalled"],
                f"5xx {r['server_5xx']}, locked {locked}, p99 {p99:.1f} ms"
                + (
                    f"; STALLED ({r['requests']} responses in {r['seconds']}s, ~{r['stuck_clients']} of "
                    f"{r['connections']} clients never answered)"
                    if r["stalled"]
                    else ""
                ),
            )
    if soak:
        growth = soak["growth_pct"]
        add(
            f"server RSS flat (within 10%) across a 1M-request run ({soak['backend']})",
            None if soak["requests"] < 1_000_000 and growth is not None and growth <= 10 else (growth or 0) <= 10,
            f"{soak['requests']:,} requests: RSS {soak['rss_after_first_chunk_mb']} -> peak {soak['rss_peak_mb']} MB "
            f"({growth}%)" + (" — fewer than 1M requests, not conclusive" if soak["requests"] < 1_000_000 else ""),
        )
    else:
        add("server RSS flat (within 10%) across a 1M-request run", None, "no soak in this run (--soak-requests)")
    invariants = [r["invariant"]["result"] for r in rows] + ([soak["invariant"]["result"]] if soak else [])
    add(
        "invariant after every scenario (no slot with two live claims, counts add up)",
        bool(invariants) and all(v == "PASS" for v in invariants),
        f"{invariants.count('PASS')}/{len(invariants)} PASS",
    )
    return out


def render(result: dict[str, Any]) -> str:
    """The printed report: ceiling, scenarios with ratios and invariant, history, soak, targets."""
    lines: list[str] = []
    m = result["meta"]
    lines.append(
        f"Booking API benchmark — {m['when']}, commit {m['project_commit']}, "
        f"{m['machine']['cpus']} CPUs, {m['load_generator']}"
    )
    lines.append(f"server: {m['server']}")
    lines.append("")
    lines.append("Framework ceiling (bench/ceiling_app.py, same uvicorn flags, same wrk)")
    head = (
        f"{'workers':>7} {'endpoint':<10} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'CPU ms':>6} {'RSS MB':>7} {'load':>5}"
    )
    lines += [head, "-" * len(head)]
    for c in result["ceiling"]:
        lat = c["latency_ms"]
        errors = c["server_5xx"] + c["other_non_2xx"] + c["socket_errors"]
        lines.append(
            f"{c['workers']:>7} {c['endpoint']:<10} {c['connections']:>5} {c['rps']:>8.0f} {lat['p50']:>7.1f} "
            f"{lat['p95']:>7.1f} {lat['p99']:>7.1f} {errors:>6} {_num(c['server_cpu_ms_per_request'], 2):>6} "
            f"{c['rss']['peak_mb']:>7.1f} {c['load_average_1m']['before']:>5.1f}"
        )
    lines.append("")
    lines.append("Service scenarios (ratios to the ceiling with the same workers and connections)")
    head = (
        f"{'backend':<11} {'wk':>2} {'history':>9} {'scenario':<10} {'conns':>5} {'req/s':>7} {'x ceil':>6} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'p99 x':>6} {'2xx':>7} {'409':>6} {'5xx':>4} {'other':>5} "
        f"{'stuck':>5} {'CPU ms':>6} {'RSS MB':>7} {'x empty':>7} {'load':>5} {'invariant':<9}"
    )
    lines += [head, "-" * len(head)]
    for r in result["scenarios"]:
        lat, ratio = r["latency_ms"], r["ratio_to_ceiling"]
        other = r["other_non_2xx"] + r["socket_errors"]
        empty = r.get("ratio_to_empty", {}).get("rps")
        lines.append(
            f"{r['backend']:<11} {r['workers']:>2} {r['history_rows']:>9,} {r['scenario']:<10} {r['connections']:>5} "
            f"{r['rps']:>7.0f} {_num(ratio['rps'], 2):>6} {lat['p50']:>7.1f} {lat['p95']:>7.1f} {lat['p99']:>7.1f} "
            f"{_num(ratio['p99'], 1):>6} {r['ok_2xx']:>7} {r['conflict_409']:>6} {r['server_5xx']:>4} {other:>5} "
            f"{_stall(r):>5} {_num(r['server_cpu_ms_per_request'], 1):>6} {r['rss']['peak_mb']:>7.1f} "
            f"{_num(empty, 2):>7} {r['load_average_1m']['before']:>5.1f} {r['invariant']['result']:<9}"
        )
    lines.append(
        "  2xx: holds won, confirms, releases, cancels (churn/hot) or listings; 409: expected refusals; "
        "other: other 4xx + socket errors; RSS: peak of the uvicorn process tree (sum of VmRSS);"
    )
    lines.append(
        "  stuck: clients left waiting on a request never answered in the run (connections - req/s x mean latency;"
        " 'all': not one answer), or whole seconds without any answer ('3s'); percentiles cover answered requests"
    )
    lines.append(
        "  CPU ms: server CPU time (all processes) per answered request; load: 1-minute load average before the run"
        " (this machine has 2 CPUs; above ~3 other work was competing)"
    )
    if result["soak"]:
        s = result["soak"]
        lines.append("")
        lines.append(
            f"Soak (hold churn on {s['backend']}, {s['workers']} workers): {s['requests']:,} requests in "
            f"{s['seconds']}s; RSS after first 15 s {s['rss_after_first_chunk_mb']} MB, end {s['rss_end_mb']} "
            f"MB, peak {s['rss_peak_mb']} MB ({s['growth_pct']}%); 5xx {s['server_5xx']}; invariant "
            f"{s['invariant']['result']}"
        )
    lines.append("")
    lines.append("Targets of issue 4")
    for t in result["targets"]:
        lines.append(f"  [{t['result']:<6}] {t['target']}: {t['figures']}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    for failure in result["failures"]:
        lines.append(f"FAILURE: {failure}")
    lines.append(f"elapsed {m['elapsed_seconds']}s")
    return "\n".join(lines)


def _stall(row: dict[str, Any]) -> str:
    if not row["requests"]:
        return "all"
    if row["stuck_clients"] >= 0.25 * row["connections"]:
        return f"{row['stuck_clients']}"
    return f"{row['silent_seconds']}s" if row["silent_seconds"] else "-"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the servers and scratch databases are cleaned up either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loadgen.wrk_version()  # fail early, with the install hint, when wrk is missing
    bench = Bench(options)
    try:
        result = bench.run()
    except (KeyboardInterrupt, SystemExit):
        log("interrupted: servers stopped, scratch databases dropped")
        return 130
    except Exception:
        traceback.print_exc()
        log(f"failed: servers stopped, scratch databases dropped; server logs in {bench.logs}")
        return 2
    finally:
        stop_all()
        bench.dbs.cleanup()
    if not options.keep_logs and not result["failures"]:
        shutil.rmtree(bench.logs, ignore_errors=True)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(render(result))
    print(f"JSON: {options.out}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
