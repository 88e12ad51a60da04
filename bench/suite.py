"""The whole benchmark run: the ceiling, each scenario on each backend, history growth and the soak.

Every scenario gets a fresh scratch database and server, seeded over HTTP; bench.scenarios drives
and measures it, and the rows, notes and failures collect here.
"""

import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import log
from bench.checks import ApiChecker, SqlChecker
from bench.databases import Databases
from bench.record import CHURN, FILE, HOT, LISTING, MEMORY, POSTGRES, RESULTS, CeilingRow, ScenarioRow, Soak
from bench.scenarios import Options, ceiling_row, scenario_row, soak
from bench.seed import Api, Pool, insert_history, seed, settle_claims
from bench.server import Server, service_env

WORKERS = {MEMORY: 1, FILE: 2, POSTGRES: 2}
HOLD_TTL_SECONDS = "3600"  # no hold set up for a scenario expires during the run


class Bench:
    """One benchmark run: its scratch databases, its servers and every row measured so far."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.admin_token = secrets.token_urlsafe(24)
        self.dbs = Databases(options.pg_url)
        self.logs = RESULTS / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work = self.dbs.tmp
        self.ceiling: dict[tuple[int, int], CeilingRow] = {}
        self.ceiling_rows: list[CeilingRow] = []
        self.rows: list[ScenarioRow] = []
        self.soak: Soak | None = None
        self.notes: list[str] = []
        self.failures: list[str] = []

    # servers

    def server(self, app: str, workers: int, env: dict[str, str], label: str) -> Server:
        return Server(app=app, env=env, workers=workers, log_path=self.logs / f"{label}-{uuid.uuid4().hex[:6]}.log")

    def service(self, backend: str, url: str) -> Server:
        env = service_env(url, self.admin_token, HOLD_TTL_SECONDS)
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
                    row = ceiling_row(server, endpoint, pool_file, conns, self.o)
                    self.ceiling_rows.append(row)
                    if endpoint == "/ping":
                        self.ceiling[(workers, conns)] = row
        finally:
            server.stop()

    # scenarios

    def scenario(self, *, name: str, server: Server, connections: int, **kwargs: Any) -> ScenarioRow:
        """Measure one scenario (bench.scenarios.scenario_row); keep its row and what failed in it."""
        ceiling = self.ceiling.get((server.workers, connections))
        row = scenario_row(self.o, name=name, server=server, connections=connections, ceiling=ceiling, **kwargs)
        self.failures += row.problems(self.o.recover_seconds)
        self.rows.append(row)
        log(
            f"  {row.backend:<11} {name:<10} history={row.history_rows:<8} {row.rps:>8.1f} req/s  "
            f"p99 {row.latency_ms.p99:.1f} ms  5xx {row.server_5xx}  invariant {row.invariant['result']}"
        )
        return row

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

    @contextmanager
    def seeded_service(self, backend: str) -> Iterator[tuple[Server, Api, Pool, SqlChecker | ApiChecker]]:
        """A fresh database and server for `backend`, seeded, with its invariant checker; all removed after."""
        url = self.dbs.new(backend)
        server = self.service(backend, url)
        checker: SqlChecker | ApiChecker | None = None
        try:
            api, pool = self.seed(server)
            checker = ApiChecker(api, pool) if backend == MEMORY else SqlChecker(url)
            yield server, api, pool, checker
        finally:
            server.stop()
            if checker:
                checker.close()
            self.dbs.drop(url)

    def holds_scenario(
        self, name: str, pool_file: Path, connections: int, api: Api, pool: Pool, slots: list[str], **common: Any
    ) -> ScenarioRow:
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

    def listing_scenario(self, pool_file: Path, **common: Any) -> ScenarioRow:
        return self.scenario(
            name=LISTING, script="get.lua", pool_file=pool_file, connections=self.o.connections, **common
        )

    def run_backend(self, backend: str) -> None:
        log(f"backend {backend}: {WORKERS[backend]} worker(s)")
        with self.seeded_service(backend) as (server, api, pool, checker):
            files = self.pool_files(pool, backend)
            common = {"backend": backend, "history": 0, "server": server, "checker": checker}
            # The hot slot goes last: if the service stalls under 64 clients, nothing else is spoiled.
            self.holds_scenario(CHURN, files[CHURN], self.o.connections, api, pool, pool.churn_slots, **common)
            self.listing_scenario(files[LISTING], **common)
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
                listing = self.listing_scenario(files[LISTING], **common)
                churn.history_seed = listing.history_seed = info
            finally:
                server.stop()
        finally:
            if checker:
                checker.close()
            self.dbs.drop(url)

    # the soak

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
            self.soak = soak(self.o, backend, server, checker, self.pool_files(pool, f"{backend}-soak")[CHURN])
        log(
            f"  soak: {self.soak.requests:,} requests, RSS {self.soak.rss_after_first_chunk_mb} -> "
            f"{self.soak.rss_end_mb} MB (peak {self.soak.rss_peak_mb}), invariant {self.soak.invariant['result']}"
        )

    def run(self) -> None:
        """The ceiling under the scenarios' settings, then every backend, history level and the soak."""
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
        empty = {(r.backend, r.scenario): r for r in self.rows if r.history_rows == 0}
        for r in self.rows:
            base = empty.get((r.backend, r.scenario))
            if r.history_rows and base:
                r.ratio_to_empty = {"rps": round(r.rps / base.rps, 3) if base.rps else None}
