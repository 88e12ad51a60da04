"""The fan-out run: for each backend and subscriber count, its servers, subscribers and writers, measured.

Topology. In-memory SQLite: one server, one worker; writes and streams share the process. SQLite
file and PostgreSQL: two single-worker servers on the same database, one taking the writes, the
other serving the streams, so every event crosses processes (PostgreSQL: NOTIFY; SQLite file: the
board server's poll every STREAM_POLL_SECONDS, 0.05 s by default). `--workers 2` would leave the
split to the kernel; two servers make it certain.

Subscribers run in spawned processes of up to SUBSCRIBERS_PER_PROCESS streams each
(bench.subscribers), writers are threads here (bench.fanout_writers); each measurement becomes a
FanoutRow (bench.fanout_record), and the rows, notes and failures collect here.
"""

import asyncio
import multiprocessing
import os
import secrets
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import log
from bench.databases import Databases
from bench.fanout_record import Delivery, FanoutRow, Memory, deliveries, difference, problems
from bench.fanout_writers import Writer, positions
from bench.record import MEMORY, POSTGRES, RESULTS
from bench.seed import Api, Pool, seed
from bench.server import RssSampler, Server, service_env
from bench.subscribers import Parsed, group_main, open_streams, request_bytes

HOLD_TTL_SECONDS = "3600"  # no hold lapses during a run: every change is a write
SUBSCRIBERS_PER_PROCESS = 500


@dataclass
class Options:
    quick: bool
    backends: list[str]
    subscribers: list[int]
    seconds: float
    rate: float
    writers: int
    settle: float
    users: int
    pg_url: str
    out: Path
    keep_logs: bool


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def _median_rss_kb(server: Server, samples: int = 5, gap: float = 0.2) -> int:
    values = []
    for _ in range(samples):
        values.append(server.rss_kb())
        time.sleep(gap)
    return int(statistics.median(values))


def _receive(groups: list[tuple[Any, Any]], kind: str, timeout: int, what: str) -> list[Any]:
    """Each subscriber group's next message, which must be `kind`; `what` names it in the error."""
    messages = []
    for _, conn in groups:
        if not conn.poll(timeout):
            raise RuntimeError(f"a subscriber group did not {what} within {timeout} s")
        message = conn.recv()
        if message[0] != kind:
            raise RuntimeError(f"subscriber group failed: {message}")
        messages.append(message)
    return messages


class Fanout:
    """One fan-out run: its scratch databases, its servers and every row measured so far."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.admin_token = secrets.token_urlsafe(24)
        self.dbs = Databases(options.pg_url)
        self.logs = RESULTS / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.rows: list[FanoutRow] = []
        self.notes: list[str] = []
        self.failures: list[str] = []
        self.servers: list[Server] = []

    def server(self, url: str, label: str) -> Server:
        env = service_env(url, self.admin_token, HOLD_TTL_SECONDS)
        log_path = self.logs / f"fanout-{label}-{uuid.uuid4().hex[:6]}.log"
        server = Server(app="main:app", env=env, workers=1, log_path=log_path).start("/health")
        self.servers.append(server)
        return server

    @contextmanager
    def service(self, backend: str) -> Iterator[tuple[Server, Server]]:
        """(writes server, streams server): the same one in memory, two on one database otherwise."""
        url = self.dbs.new(backend)
        servers: list[Server] = []
        try:
            servers.append(self.server(url, f"{backend}-writes"))
            servers.append(servers[0] if backend == MEMORY else self.server(url, f"{backend}-streams"))
            yield servers[0], servers[1]
        finally:
            for s in servers:
                s.stop()
                if s.log_path.exists() and not self.o.keep_logs and "Traceback" not in s.log_text():
                    s.log_path.unlink()
            self.dbs.drop(url)

    def measure(self, backend: str, count: int) -> FanoutRow:
        with self.service(backend) as (writes_server, board_server):
            api = Api(writes_server.url, self.admin_token)
            pool = seed(api, users=self.o.users, churn_rooms=0, slots_per_room=0)
            return self._measure(backend, count, api, pool, writes_server, board_server)

    def _measure(
        self, backend: str, count: int, api: Api, pool: Pool, writes_server: Server, board_server: Server
    ) -> FanoutRow:
        listing = pool.listing_path  # /slots?room_id=...&from=...&to=... (48 slots, a quarter claimed)
        stream_path = listing.replace("/slots?", "/slots/stream?", 1)
        free = [s["id"] for s in api.call("GET", listing + "&limit=500")["items"] if s["status"] == "AVAILABLE"]
        # Subscriber i: anonymous for even i, else the token of user (i // 2) mod users.
        callers: list[tuple[int, str | None]] = [
            (i, None if i % 2 == 0 else pool.users[(i // 2) % len(pool.users)][1]) for i in range(count)
        ]
        port = board_server.port

        async def warm() -> None:  # code paths and pools touched once, before the baseline
            streams, _ = await open_streams("127.0.0.1", port, [request_bytes(stream_path, None)] * 10, 30)
            for s in streams:
                s.close()
            await asyncio.sleep(0.2)

        asyncio.run(warm())
        time.sleep(1.0)
        rss_before = _median_rss_kb(board_server)

        ctx = multiprocessing.get_context("spawn")
        groups = []
        processes = -(-count // SUBSCRIBERS_PER_PROCESS)  # ceil
        per = -(-count // processes)
        for start in range(0, count, per):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=group_main,
                args=(child, "127.0.0.1", port, stream_path, callers[start : start + per]),
                daemon=True,
            )
            proc.start()
            child.close()
            groups.append((proc, parent))
        try:
            return self._run_groups(
                backend, count, api, pool, writes_server, board_server, groups, callers, free, rss_before
            )
        finally:
            for proc, conn in groups:
                conn.close()
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()

    def _run_groups(
        self,
        backend: str,
        count: int,
        api: Api,
        pool: Pool,
        writes_server: Server,
        board_server: Server,
        groups: list[tuple[Any, Any]],
        callers: list[tuple[int, str | None]],
        free: list[str],
        rss_before: int,
    ) -> FanoutRow:
        connected, errors, connect_seconds = 0, [], 0.0
        for message in _receive(groups, "ready", 180, "report"):
            connected += message[1]
            errors += message[2]
            connect_seconds = max(connect_seconds, message[3])
        log(f"  {connected}/{count} streams open in {connect_seconds:.1f}s")
        time.sleep(1.0)
        rss_idle = _median_rss_kb(board_server)

        load_before = os.getloadavg()[0]
        cpu_before = board_server.cpu_seconds()
        writers_n = min(self.o.writers, len(free))
        interval = writers_n / self.o.rate
        started = time.monotonic()
        deadline = started + self.o.seconds
        writers = [
            Writer(writes_server.url, pool.users[i][1], free[i::writers_n], interval, deadline, 100 + i)
            for i in range(writers_n)
        ]
        with RssSampler(board_server) as rss:
            for w in writers:
                w.start()
            for w in writers:
                w.join(self.o.seconds + 60)
            churn_seconds = time.monotonic() - started
            time.sleep(self.o.settle)
        cpu = board_server.cpu_seconds() - cpu_before

        # The truth, per caller, from GET /slots (the writes server; same database).
        query = pool.listing_path + "&limit=500"
        truth: dict[str | None, dict[str, Any]] = {}
        for token in {t for _, t in callers}:
            truth[token] = {item["id"]: item for item in api.call("GET", query, None, token)["items"]}

        parsed: list[Parsed] = []
        for _, conn in groups:
            conn.send("stop")
        for message in _receive(groups, "result", 300, "send its streams"):
            parsed += message[1]

        writes = [w for writer in writers for w in writer.writes]
        unpositioned = positions(api, writes)
        latencies, missing, superseded = deliveries(parsed, writes)
        token_of = dict(callers)
        mismatched, samples = 0, []
        for p in parsed:
            expected = truth[token_of[p.caller]]
            if p.board != expected:
                mismatched += 1
                if len(samples) < 5:
                    samples.append(difference(p, expected))
        write_ms = sorted((w.answered - w.sent) * 1000 for w in writes)
        events = sum(len(p.events) for p in parsed)
        write_errors = sum((w.errors for w in writers), Counter())
        row = FanoutRow(
            backend=backend,
            topology="1 process: writes and streams"
            if writes_server is board_server
            else "2 processes, 1 worker each: writes on one, streams on the other",
            subscribers=count,
            connected=connected,
            with_token=sum(1 for _, t in callers if t),
            churn_seconds=round(churn_seconds, 2),
            write_rate_target=self.o.rate,
            writes_2xx=len(writes),
            writes_per_s=round(len(writes) / churn_seconds, 1),
            write_errors=dict(write_errors),
            write_latency_ms={"p50": _pct(write_ms, 0.5), "p99": _pct(write_ms, 0.99)},
            events_received=events,
            events_per_s=round(events / churn_seconds, 1),
            delivery_ms=Delivery(
                p50=_pct(latencies, 0.5),
                p99=_pct(latencies, 0.99),
                min=round(latencies[0], 2) if latencies else None,
                max=round(latencies[-1], 2) if latencies else None,
                samples=len(latencies),
                superseded_share=round(superseded / len(latencies), 3) if latencies else None,
            ),
            missing_deliveries=missing,
            memory=Memory(
                before_mb=round(rss_before / 1024, 1),
                idle_mb=round(rss_idle / 1024, 1),
                per_idle_subscriber_kb=round((rss_idle - rss_before) / connected, 1) if connected else None,
                peak_during_churn_mb=rss.summary().peak_mb,
            ),
            board_server_cpu_share=round(cpu / (churn_seconds + self.o.settle), 2),
            board_server_cpu_us_per_event=round(1e6 * cpu / events, 1) if events else None,
            boards_checked=len(parsed),
            boards_mismatched=mismatched,
            mismatch_samples=samples,
            streams_lost_early=sum(p.lost_early for p in parsed),
            stream_errors=errors[:5],
            out_of_order_events=sum(p.out_of_order for p in parsed),
            connect_seconds=connect_seconds,
            load_average_1m_before=round(load_before, 2),
        )
        if unpositioned:
            row.notes.append(f"{unpositioned} writes without a position in their hold's history")
        return row

    def run(self) -> None:
        backends = list(self.o.backends)
        if POSTGRES in backends and not self.dbs.postgres_available():
            self.notes.append(f"postgresql skipped: not reachable at {self.o.pg_url} ({self.dbs.pg_error})")
            backends.remove(POSTGRES)
        for backend in backends:
            for count in self.o.subscribers:
                log(f"fan-out: {backend}, {count} subscribers")
                row = self.measure(backend, count)
                self.rows.append(row)
                self.failures += problems(row)
                d = row.delivery_ms
                log(
                    f"  {row.writes_2xx} writes, {row.events_per_s:.0f} events/s, delivery p50 {d.p50} p99 {d.p99} ms, "
                    f"{row.memory.per_idle_subscriber_kb} KB/subscriber, boards mismatched "
                    f"{row.boards_mismatched}/{row.boards_checked}"
                )
