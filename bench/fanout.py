"""Live board fan-out: 100 and 1,000 subscribers of `GET /slots/stream` on one room while hold churn runs on it.

    .venv/bin/python -m bench.fanout            # in-memory SQLite, SQLite file, PostgreSQL x 100 and 1,000 subscribers
    .venv/bin/python -m bench.fanout --quick    # 100 subscribers, in-memory SQLite, 3 s of churn

Per backend and subscriber count: delivery latency (a write's 2xx arriving at its client to the
event carrying it arriving at a subscriber) p50/p99, events/s received, server RSS per idle
subscriber, and whether every subscriber's final board equals `GET /slots` for the same caller.

Topology. In-memory SQLite: one server, one worker; writes and streams share the process. SQLite
file and PostgreSQL: two single-worker servers on the same database, one taking the writes, the
other serving the streams, so every event crosses processes (PostgreSQL: NOTIFY; SQLite file: the
board server's poll every STREAM_POLL_SECONDS, 0.05 s by default). `--workers 2` would leave the
split to the kernel; two servers make it certain.

How delivery is matched. The writer records, for each 2xx, the hold id, the status it produced
and when the answer arrived. After the run `GET /holds/{id}/history` gives each of those
transitions its change-log position, which is the stream's event id. A write reaches a
subscriber with the first event on its slot whose id is at or past the write's position: its
own event, or a later one that superseded it (the hub sends the newest change per slot in a
batch). Latency can be negative when the event beats the write's response; nothing is clamped.
"""

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import platform
import random
import secrets
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import log
from bench.databases import Databases
from bench.record import FILE, MEMORY, POSTGRES, RESULTS
from bench.run import git_commit
from bench.seed import Api, Pool, seed
from bench.server import RssSampler, Server, stop_all
from bench.subscribers import Parsed, group_main, open_streams, raise_fd_limit, request_bytes
from serving import uvicorn_command

HOLD_TTL_SECONDS = "3600"  # no hold lapses during a run: every change is a write
SUBSCRIBERS_PER_PROCESS = 500
# Targets of the live-board issue.
DELIVERY_P99_MS = {MEMORY: 100.0, POSTGRES: 100.0, FILE: 250.0}
TARGET_SUBSCRIBERS = 1_000
IDLE_KB_PER_SUBSCRIBER = 50.0


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


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 subscribers, in-memory SQLite, 3 s of churn")
    parser.add_argument("--backends", help=f"comma list of {MEMORY},{FILE},{POSTGRES}")
    parser.add_argument("--subscribers", help="comma list of subscriber counts (default 100,1000)")
    parser.add_argument("--seconds", type=float, help="seconds of hold churn (default 10; --quick 3)")
    parser.add_argument("--rate", type=float, default=10.0, help="hold transitions per second, all writers together")
    parser.add_argument("--writers", type=int, default=4, help="writer clients (threads), each on its own slots")
    parser.add_argument("--settle", type=float, default=1.5, help="seconds between the last write and the board check")
    parser.add_argument("--users", type=int, default=50, help="users created; subscribers with a token cycle over them")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/fanout.json or fanout-quick.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep server logs in bench/results/logs/")
    a = parser.parse_args(argv)

    def names(value: str | None, default: str) -> list[str]:
        return [n.strip() for n in (value if value is not None else default).split(",") if n.strip()]

    options = Options(
        quick=a.quick,
        backends=names(a.backends, MEMORY if a.quick else f"{MEMORY},{FILE},{POSTGRES}"),
        subscribers=[int(n) for n in names(a.subscribers, "100" if a.quick else "100,1000")],
        seconds=a.seconds if a.seconds is not None else (3.0 if a.quick else 10.0),
        rate=a.rate,
        writers=a.writers,
        settle=a.settle,
        users=a.users,
        pg_url=a.pg_url.rstrip("/"),
        out=a.out or RESULTS / ("fanout-quick.json" if a.quick else "fanout.json"),
        keep_logs=a.keep_logs,
    )
    for name in options.backends:
        if name not in DELIVERY_P99_MS:
            parser.error(f"unknown backend {name!r}")
    if options.writers < 1 or options.rate <= 0 or min(options.subscribers, default=0) < 1:
        parser.error("--writers, --rate and --subscribers must be positive")
    return options


# --- the writer -----------------------------------------------------------------------------------


@dataclass
class Write:
    """One 2xx hold transition: the slot, the hold, the status it left, when it was sent and answered."""

    slot_id: str
    hold_id: str
    token: str
    status: str  # HOLD, CONFIRMED, RELEASED or CANCELLED
    sent: float
    answered: float
    position: int | None = None  # its change-log position, from the hold's history after the run


class Writer(threading.Thread):
    """A paced hold-churn client on its own slots: hold, then confirm and cancel (half) or release."""

    def __init__(self, url: str, token: str, slots: list[str], interval: float, deadline: float, seed_: int) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        self.token, self.slots, self.interval, self.deadline = token, slots, interval, deadline
        self.rng = random.Random(seed_)
        self.writes: list[Write] = []
        self.errors: Counter[str] = Counter()
        self.next_at = time.monotonic()

    def call(self, path: str, body: Any = None) -> tuple[int, Any, float, float]:
        delay = self.next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.next_at = max(self.next_at + self.interval, time.monotonic())
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        sent = time.monotonic()
        self.conn.request("POST", path, body=None if body is None else json.dumps(body), headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        answered = time.monotonic()
        return response.status, json.loads(data) if data else None, sent, answered

    def step(self, slot: str, path: str, action: str, body: Any = None) -> dict[str, Any] | None:
        status, data, sent, answered = self.call(path, body)
        if status // 100 != 2:
            self.errors[f"{action} {status}"] += 1
            return None
        self.writes.append(Write(slot, data["hold_id"], self.token, data["status"], sent, answered))
        return data  # type: ignore[no-any-return]

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                slot = self.rng.choice(self.slots)
                hold = self.step(slot, "/holds", "hold", {"slot_id": slot})
                if hold is None or time.monotonic() >= self.deadline:
                    continue
                hold_id = hold["hold_id"]
                if self.rng.random() < 0.5:
                    if self.step(slot, f"/holds/{hold_id}/confirm", "confirm") and time.monotonic() < self.deadline:
                        self.step(slot, f"/holds/{hold_id}/cancel", "cancel")
                else:
                    self.step(slot, f"/holds/{hold_id}/release", "release")
        except (OSError, http.client.HTTPException) as exc:
            self.errors[f"connection: {type(exc).__name__}"] += 1
        finally:
            self.conn.close()


def positions(api: Api, writes: list[Write]) -> int:
    """Give each write its change-log position (the stream's event id) from its hold's history."""
    tokens = {w.hold_id: w.token for w in writes}

    def history(hold_id: str) -> tuple[str, dict[str, int]]:
        items = api.call("GET", f"/holds/{hold_id}/history", None, tokens[hold_id])["items"]
        return hold_id, {item["status"]: item["position"] for item in items}

    with ThreadPoolExecutor(8) as executor:
        found = dict(executor.map(history, tokens))
    missing = 0
    for w in writes:
        w.position = found[w.hold_id].get(w.status)
        missing += w.position is None
    return missing


# --- one measurement ------------------------------------------------------------------------------


@dataclass
class Delivery:
    p50: float | None
    p99: float | None
    min: float | None
    max: float | None
    samples: int
    superseded_share: float | None  # reached the subscriber by a later event on its slot, not its own


@dataclass
class Memory:
    before_mb: float
    idle_mb: float
    per_idle_subscriber_kb: float | None
    peak_during_churn_mb: float


@dataclass
class FanoutRow:
    backend: str
    topology: str
    subscribers: int
    connected: int
    with_token: int
    churn_seconds: float
    write_rate_target: float
    writes_2xx: int
    writes_per_s: float
    write_errors: dict[str, int]
    write_latency_ms: dict[str, float | None]
    events_received: int
    events_per_s: float
    delivery_ms: Delivery
    missing_deliveries: int
    memory: Memory
    board_server_cpu_share: float
    board_server_cpu_us_per_event: float | None  # the streams server's CPU time per event received by a subscriber
    boards_checked: int
    boards_mismatched: int
    mismatch_samples: list[str]
    streams_lost_early: int
    stream_errors: list[str]
    out_of_order_events: int
    connect_seconds: float
    load_average_1m_before: float
    notes: list[str] = field(default_factory=list)


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


def deliveries(parsed: list[Parsed], writes: list[Write]) -> tuple[list[float], int, int]:
    """Latency of every (write, subscriber) pair in ms, how many writes never reached a subscriber, and
    how many arrived by a later event than their own."""
    by_slot: dict[str, list[Write]] = defaultdict(list)
    for w in writes:
        if w.position is not None:
            by_slot[w.slot_id].append(w)
    for ws in by_slot.values():
        ws.sort(key=lambda w: w.position or 0)
    latencies: list[float] = []
    missing = superseded = 0
    for p in parsed:
        events: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for arrived, event_id, slot_id in p.events:
            events[slot_id].append((arrived, event_id))
        for slot_id, ws in by_slot.items():
            got = events.get(slot_id, [])
            k = 0
            for w in ws:
                while k < len(got) and got[k][1] < (w.position or 0):
                    k += 1
                if k == len(got):
                    missing += 1
                    continue
                latencies.append((got[k][0] - w.answered) * 1000)
                superseded += got[k][1] != w.position
    latencies.sort()
    return latencies, missing, superseded


class Fanout:
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
        env = {
            "DATABASE_URL": url,
            "ADMIN_TOKEN": self.admin_token,
            "SEED_DEMO_DATA": "false",
            "HOLD_TTL_SECONDS": HOLD_TTL_SECONDS,
            # The scenarios' users hold and re-hold at will; the limits' SQL still runs on every hold.
            "HOLD_MAX_ACTIVE_PER_USER": "10000",
            "HOLD_REHOLD_COOLDOWN_SECONDS": "0",
            # Limits high enough never to refuse, so every hold still pays for the check; no access log, as before.
            "RATE_LIMIT_SIGNUPS": "1000000/minute",
            "RATE_LIMIT_HOLDS": "1000000/minute",
            "ACCESS_LOG": "false",
        }
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
        for _, conn in groups:
            if not conn.poll(180):
                raise RuntimeError("a subscriber group did not report within 180 s")
            message = conn.recv()
            if message[0] != "ready":
                raise RuntimeError(f"subscriber group failed: {message}")
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
        for _, conn in groups:
            if not conn.poll(300):
                raise RuntimeError("a subscriber group did not send its streams within 300 s")
            message = conn.recv()
            if message[0] != "result":
                raise RuntimeError(f"subscriber group failed: {message}")
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
                    samples.append(_difference(p, expected))
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


def _difference(p: Parsed, expected: dict[str, Any]) -> str:
    board = p.board or {}
    if p.board is None:
        return f"subscriber {p.caller}: no board (status {p.status}, {p.error})"
    diff = [k for k in set(board) | set(expected) if board.get(k) != expected.get(k)]
    k = diff[0]
    return (
        f"subscriber {p.caller}: {len(diff)} slot(s) differ, e.g. {k}: stream {board.get(k)} vs GET {expected.get(k)}"
    )


def problems(row: FanoutRow) -> list[str]:
    """What makes the run fail (never speed): boards that differ, lost streams, undelivered writes."""
    where = f"{row.backend} x {row.subscribers}"
    out = []
    if row.connected < row.subscribers:
        out.append(f"{where}: only {row.connected} of {row.subscribers} streams opened: {row.stream_errors}")
    if row.boards_mismatched:
        out.append(f"{where}: {row.boards_mismatched} boards differ from GET /slots: {row.mismatch_samples}")
    if row.streams_lost_early:
        out.append(f"{where}: {row.streams_lost_early} streams closed by the server during the run")
    if row.missing_deliveries:
        out.append(f"{where}: {row.missing_deliveries} (write, subscriber) pairs never delivered")
    if not row.writes_2xx:
        out.append(f"{where}: no write succeeded: {row.write_errors}")
    return out


def targets(rows: list[FanoutRow]) -> list[dict[str, str]]:
    out = []
    for backend, limit in DELIVERY_P99_MS.items():
        r = next((r for r in rows if (r.backend, r.subscribers) == (backend, TARGET_SUBSCRIBERS)), None)
        if r is None:
            continue
        p99 = r.delivery_ms.p99
        out.append(
            {
                "target": f"delivery p99 < {limit:.0f} ms on {backend} at {TARGET_SUBSCRIBERS:,} subscribers",
                "result": "n/a" if p99 is None else ("MET" if p99 < limit else "MISSED"),
                "figures": f"p99 {p99} ms",
            }
        )
    idle = [r for r in rows if r.memory.per_idle_subscriber_kb is not None]
    if idle:
        worst = max(idle, key=lambda r: r.memory.per_idle_subscriber_kb or 0)
        out.append(
            {
                "target": f"memory per idle subscriber < {IDLE_KB_PER_SUBSCRIBER:.0f} KB",
                "result": "MET" if (worst.memory.per_idle_subscriber_kb or 0) < IDLE_KB_PER_SUBSCRIBER else "MISSED",
                "figures": "; ".join(
                    f"{r.backend} x {r.subscribers}: {r.memory.per_idle_subscriber_kb} KB" for r in idle
                ),
            }
        )
    out.append(
        {
            "target": "every subscriber's final board equals GET /slots",
            "result": "MET" if rows and not any(r.boards_mismatched for r in rows) else "MISSED",
            "figures": ", ".join(f"{r.boards_mismatched}/{r.boards_checked}" for r in rows),
        }
    )
    return out


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Live board fan-out: {result['meta']['when']}, commit {result['meta']['project_commit']}",
        f"  {result['meta']['command']}",
        "",
        "| backend | topology | subs | writes/s | events/s | delivery p50 ms | p99 ms | max ms | superseded "
        "| write p99 ms | KB/idle sub | RSS idle MB | peak MB | server CPU | CPU us/event | boards ok | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        d, m = r["delivery_ms"], r["memory"]
        lines.append(
            f"| {r['backend']} | {r['topology']} | {r['connected']:,} | {r['writes_per_s']} | {r['events_per_s']:,.0f} "
            f"| {d['p50']} | {d['p99']} | {d['max']} | {d['superseded_share']} | {r['write_latency_ms']['p99']} "
            f"| {m['per_idle_subscriber_kb']} | {m['idle_mb']} | {m['peak_during_churn_mb']} "
            f"| {r['board_server_cpu_share']} | {r['board_server_cpu_us_per_event']} "
            f"| {r['boards_checked'] - r['boards_mismatched']}/{r['boards_checked']} "
            f"| {r['load_average_1m_before']} |"
        )
    lines += ["", "Targets:"]
    lines += [f"  {t['result']:<7} {t['target']}: {t['figures']}" for t in result["targets"]]
    lines += [f"  note: {n}" for n in result["notes"]]
    lines += [f"  FAIL: {f}" for f in result["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    bench = Fanout(options)
    started = time.monotonic()
    try:
        bench.run()
    except BaseException:
        stop_all()
        raise
    finally:
        bench.dbs.cleanup()
    result = {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.fanout " + " ".join(sys.argv[1:] if argv is None else argv),
            "elapsed_seconds": round(time.monotonic() - started, 1),
            "project_commit": git_commit(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "server": " ".join(uvicorn_command("main:app", 0, 1)).replace("--port 0", "--port <free>"),
            "settings": {"HOLD_TTL_SECONDS": HOLD_TTL_SECONDS, "SEED_DEMO_DATA": "false"},
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        },
        "rows": [asdict(r) for r in bench.rows],
        "targets": targets(bench.rows),
        "notes": bench.notes,
        "failures": bench.failures,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    log(f"wrote {options.out}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
