"""Crashes, restarts and failing databases, tested for real: what a client was told survives, nothing is half-written.

- `kill -9` of every server process under sustained hold/confirm load (a SQLite file and
  PostgreSQL, two workers each), then a restart: every 2xx is in the database as acknowledged,
  every hold's change-log events match it, and the invariant holds.
- A PostgreSQL of our own stopped and started under load: 503s with `Retry-After`, never a 500,
  and the service recovers by itself.
- A full or read-only SQLite file, and PostgreSQL lock timeouts: a 503 with its own code,
  logged with its cause, and nothing written.
"""

import contextlib
import functools
import logging
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from bench.server import Server, free_port, session_pids
from db import normalise_url
from main import create_app
from tests.conftest import POSTGRES_DB, POSTGRES_URL, REQUIRE_POSTGRES, empty_postgres
from tests.factories import ADMIN_TOKEN, assert_problem, isolated_settings, make_slot, make_user
from tests.invariant import Ledger, hold_claims, lifecycle_step, overlapping_claims, slots_with_two_live_claims
from tests.race import http_racers
from tests.server import seed_over_http

CLIENTS, SLOTS, TTL = 8, 40, 3
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# --- what the clients were told, and what the database must then hold ------------------------------


def _client_loop(
    base_url_slots: tuple[list[str], dict[str, str]],
    index: int,
    until: threading.Event,
    ledger: Ledger,
    client: httpx.Client,
) -> None:
    """Sustained hold/confirm/cancel/release/extend traffic until `until` is set; a lost connection is no answer."""
    slots, headers = base_url_slots
    rng = random.Random(index)
    while not until.is_set():
        try:
            granted = lifecycle_step(
                client,
                rng,
                slots,
                headers,
                ledger,
                confirm_below=0.45,
                release_below=0.8,
                extend_below=0.9,
                cancel_confirmed=0.8,
            )
            if not granted:
                time.sleep(0.01)
        except httpx.TransportError:
            time.sleep(0.05)  # the server is gone (killed): whatever was in flight was never acknowledged


# A hold's final state given the last 2xx its client got; the next call may have been in flight
# (committed or not) when the server died or the database went away.
_AFTER = {
    "hold": {"HOLD", "EXPIRED", "CONFIRMED", "RELEASED"},
    "confirm": {"CONFIRMED", "CANCELLED"},
    "release": {"RELEASED"},
    "cancel": {"CANCELLED"},
    "extend": {"HOLD", "EXPIRED"},
}
_EVENT_OF = {"hold": "HELD", "confirm": "CONFIRMED", "release": "RELEASED", "cancel": "CANCELLED", "extend": "EXTENDED"}


def half_written(conn: object) -> list[tuple[object, ...]]:
    """Holds whose newest change-log event does not describe them (a change without its event, or the reverse)."""
    rows = conn.execute(  # type: ignore[attr-defined]
        text(
            "SELECT h.id, h.status, (SELECT e.status FROM slot_events e WHERE e.hold_id = h.id"
            " ORDER BY e.position DESC LIMIT 1) AS logged FROM holds h"
        )
    ).all()
    orphans = conn.execute(  # type: ignore[attr-defined]
        text(
            "SELECT e.hold_id FROM slot_events e"
            " WHERE e.hold_id IS NOT NULL AND e.hold_id NOT IN (SELECT id FROM holds)"
        )
    ).all()
    return [tuple(row) for row in rows if row.logged != row.status] + [("event without hold", *o) for o in orphans]


def check_database(engine: Engine, ledger: Ledger) -> None:
    """Every 2xx as acknowledged, every change with its event, and never two live claims."""
    with engine.connect() as conn:
        assert half_written(conn) == []
        assert slots_with_two_live_claims(conn, datetime.now(UTC)) == []
        # Both backends read the clock under the slot's lock, so one slot's timestamps follow commit order.
        assert overlapping_claims(hold_claims(conn), tolerance=timedelta(milliseconds=500)) == []
        holds = {
            _id(r.id): r for r in conn.execute(text("SELECT id, status, confirmed_at, extension_count FROM holds"))
        }
        events: dict[str, set[str]] = defaultdict(set)
        for r in conn.execute(text("SELECT hold_id, kind FROM slot_events WHERE hold_id IS NOT NULL")):
            events[_id(r.hold_id)].add(r.kind)
    assert ledger.acknowledged, "no request was acknowledged"
    for hold_id, acks in ledger.acknowledged.items():
        stored = holds.get(hold_id)
        assert stored is not None, (hold_id, acks)
        last_action = acks[-1][0]
        assert stored.status in _AFTER[last_action], (hold_id, stored.status, acks)
        for action, body in acks:
            assert _EVENT_OF[action] in events[hold_id], (hold_id, action, events[hold_id])
            if action == "confirm":
                confirmed_at = datetime.fromisoformat(str(body["confirmed_at"]))
                assert _utc(stored.confirmed_at) == confirmed_at, (hold_id, stored.confirmed_at, body)
            if action == "extend":
                assert stored.extension_count == 1, (hold_id, acks)


def _id(value: object) -> str:
    return str(uuid.UUID(str(value)))  # SQLite stores a UUID as 32 hex digits


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite: canonical naive-UTC text
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _start(url: str, log: Path, workers: int = 2, **env: str) -> Server:
    settings = {"DATABASE_URL": url, "ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false"}
    return Server(
        app="main:app", env={**settings, "HOLD_TTL_SECONDS": str(TTL), **env}, workers=workers, log_path=log
    ).start("/health", timeout=30)


def _run_load(
    base_url: str, users: list[dict[str, str]], slots: list[str], until: threading.Event, ledger: Ledger
) -> threading.Thread:
    loops = [functools.partial(_client_loop, (slots, users[i]), i, until, ledger) for i in range(CLIENTS)]

    def run() -> None:
        with http_racers(base_url, CLIENTS, timeout=15) as racers:
            racers.race(loops, timeout=120)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# --- kill -9 under load --------------------------------------------------------------------------


@pytest.fixture(params=["sqlite-file", "postgresql"])
def crash_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite-file":
        return f"sqlite:///{tmp_path / 'crash.db'}"
    pg: Engine = request.getfixturevalue("postgres_engine")
    name = f"{POSTGRES_DB}_crash"
    admin = create_engine(pg.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg.url.set(database=name).render_as_string(hide_password=False)


@pytest.mark.slow
def test_kill_9_of_every_server_process_under_load_loses_no_acknowledged_change(crash_url: str, tmp_path: Path) -> None:
    server = _start(crash_url, tmp_path / "before.log")
    engine = create_engine(normalise_url(crash_url))
    try:
        users, slots = seed_over_http(server.url, ADMIN_TOKEN, users=CLIENTS, slots=SLOTS)
        ledger, until = Ledger(), threading.Event()
        load = _run_load(server.url, users, slots, until, ledger)
        time.sleep(3)
        in_flight = ledger.statuses.total()
        pids = server.pids()
        server.kill()  # every process of the tree at once, mid-request: no shutdown, no rollback
        deadline = time.monotonic() + 10
        while any(pid in session_pids(pids[0]) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # clients see their connections die
        until.set()
        load.join(timeout=60)
        assert in_flight > 50, f"too little load before the kill: {ledger.statuses}"
        assert not [s for s in ledger.statuses if s >= 500], ledger.statuses

        server = _start(crash_url, tmp_path / "after.log")
        check_database(engine, ledger)
        # And the restarted service works: a fresh hold on a free slot, confirmed.
        with httpx.Client(base_url=server.url, timeout=15) as client:
            fresh = seed_over_http(server.url, ADMIN_TOKEN, users=1, slots=1)
            held = client.post("/holds", json={"slot_id": fresh[1][0]}, headers=fresh[0][0])
            assert held.status_code == 201, held.text
            assert client.post(f"/holds/{held.json()['hold_id']}/confirm", headers=fresh[0][0]).status_code == 200
        server.stop(grace=15)
        assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
        print(f"crash: {dict(ledger.statuses)} before the kill; {len(ledger.acknowledged)} holds acknowledged")
    finally:
        server.stop()
        engine.dispose()


# --- a PostgreSQL of our own, stopped and started under load --------------------------------------


@dataclass
class OwnPostgres:
    data: Path
    port: int
    user: str | None  # run pg_ctl as this user (initdb refuses root)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.ctl("-o", options, "-l", str(self.data / "log"), "-w", "start")


def _postgres_cannot_run(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"cannot run a throwaway PostgreSQL: {reason}", pytrace=False)
    pytest.skip(f"cannot run a throwaway PostgreSQL: {reason}")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A throwaway PostgreSQL cluster on a free port, ours to stop and start (never the shared one)."""
    if not (PG_BIN / "initdb").exists():
        _postgres_cannot_run(f"no {PG_BIN / 'initdb'}")
    user = "postgres" if os.geteuid() == 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="booking-own-pg-"))
    if user:
        shutil.chown(tmp, user)
    pg = OwnPostgres(tmp / "data", free_port(), user)
    try:
        initdb = [str(PG_BIN / "initdb"), "-D", str(pg.data), "-U", "postgres", "--auth=trust", "-N"]
        subprocess.run(
            ["runuser", "-u", user, "--", *initdb] if user else initdb, check=True, capture_output=True, timeout=60
        )
        pg.start()
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _postgres_cannot_run(str(exc))
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            pg.ctl("-m", "immediate", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_postgres_restarted_under_load_gives_503s_with_retry_after_and_recovers_without_a_restart(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    server = _start(own_postgres.url, tmp_path / "server.log")
    engine = create_engine(normalise_url(own_postgres.url))
    try:
        users, slots = seed_over_http(server.url, ADMIN_TOKEN, users=CLIENTS, slots=SLOTS)
        ledger, until = Ledger(), threading.Event()
        load = _run_load(server.url, users, slots, until, ledger)
        time.sleep(2)
        own_postgres.ctl("-m", "fast", "-w", "stop")
        time.sleep(2)
        own_postgres.start()
        back = time.monotonic()
        time.sleep(6)
        until.set()
        load.join(timeout=60)
        unavailable = list(ledger.unavailable)
        print(f"restart: {dict(ledger.statuses)}; 503 codes {Counter(u[2] for u in unavailable)}")
        assert unavailable, "no request met the outage"
        assert {status for _, status, _, _ in unavailable} == {503}, ledger.statuses
        assert {code for _, _, code, _ in unavailable} == {"DATABASE_BUSY"}  # the contract
        assert all(retry_after for *_, retry_after in unavailable), unavailable
        last_503 = max(t for t, *_ in unavailable)
        print(f"restart: last 503 {last_503 - back:+.2f}s after PostgreSQL was back")
        assert last_503 - back < 5, f"503s went on {last_503 - back:.1f}s after PostgreSQL was back"
        assert ledger.statuses[201] > 0
        check_database(engine, ledger)
        log = server.log_text()
        assert "503 DATABASE_" in log, "the 503s were not logged"
        assert "INTERNAL_ERROR" not in log and "Exception in ASGI application" not in log, log[-3000:]
    finally:
        server.stop()
        engine.dispose()


# --- a full or read-only SQLite file --------------------------------------------------------------


def _on_every_new_connection(app_engine: Engine, *pragmas: str) -> object:
    """Run these PRAGMAs on every connection the app opens from now on (the pool is emptied)."""

    @event.listens_for(app_engine, "connect")
    def _pragma(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    app_engine.dispose()
    return _pragma


def _logged_503s(caplog: pytest.LogCaptureFixture, code: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "booking.errors" and f"503 {code}" in r.getMessage() and r.exc_info]


def test_a_full_sqlite_file_is_a_logged_503_database_full_and_nothing_is_half_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # PRAGMA max_page_count caps the file at its current size (it cannot go lower): SQLite then
    # fails the first write that needs a new page with SQLITE_FULL, "database or disk is full",
    # its answer to a full disk too. Holds and releases on one slot add rows until one does.
    settings = isolated_settings(database_url=f"sqlite:///{tmp_path / 'full.db'}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        alice, slot = make_user(client), make_slot(client)
        engine = client.app.state.db.engine  # type: ignore[attr-defined]
        capped = _on_every_new_connection(engine, "PRAGMA max_page_count = 1")
        full = None
        for _ in range(500):
            response = client.post("/holds", json={"slot_id": slot}, headers=alice.auth)
            if response.status_code == 201:
                response = client.post(f"/holds/{response.json()['hold_id']}/release", headers=alice.auth)
            if response.status_code != 200:
                full = response
                break
        assert full is not None, "the file never filled up"
        assert_problem(full, 503, "DATABASE_FULL")
        assert full.headers["retry-after"]
        assert _logged_503s(caplog, "DATABASE_FULL")
        with engine.connect() as conn:
            assert half_written(conn) == []
        assert client.get("/health").status_code == 200  # reads still work
        event.remove(engine, "connect", capped)  # the disk has space again
        engine.dispose()
        with engine.connect() as conn:
            live = conn.execute(text("SELECT id FROM holds WHERE status = 'HOLD'")).scalars().all()
        for hold_id in live:  # a release that failed left its hold live; give it back
            assert client.post(f"/holds/{hold_id}/release", headers=alice.auth).status_code == 200
        assert client.post("/holds", json={"slot_id": slot}, headers=alice.auth).status_code == 201


def test_a_read_only_sqlite_file_is_a_logged_503_and_deep_health_reports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # PRAGMA query_only makes SQLite refuse every write with SQLITE_READONLY, the error a file
    # or mount it may not write gives (chmod would not do: the suite may run as root).
    settings = isolated_settings(database_url=f"sqlite:///{tmp_path / 'ro.db'}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        alice, slot = make_user(client), make_slot(client)
        engine = client.app.state.db.engine  # type: ignore[attr-defined]
        _on_every_new_connection(engine, "PRAGMA query_only = ON")
        response = client.post("/holds", json={"slot_id": slot}, headers=alice.auth)
        assert_problem(response, 503, "DATABASE_READ_ONLY")
        assert response.headers["retry-after"]
        assert _logged_503s(caplog, "DATABASE_READ_ONLY")
        assert client.get(f"/slots/{slot}").json()["status"] == "AVAILABLE"
        assert client.get("/health").status_code == 200  # it answers...
        deep = client.get("/health?deep=true")  # ...but cannot write
        assert_problem(deep, 503, "DATABASE_READ_ONLY")
        assert deep.json()["database"] == "sqlite" and deep.headers["retry-after"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM holds")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM slot_events WHERE hold_id IS NOT NULL")).scalar() == 0


# --- PostgreSQL: lock timeouts, and the clock read after the locks --------------------------------


@pytest.fixture
def pg_url(postgres_engine: Engine) -> str:
    empty_postgres(postgres_engine)
    return POSTGRES_URL


def _blocker(sql: str, **params: object) -> psycopg.Connection:
    """Another session holding row locks in an open transaction (a psql session left open, say)."""
    conn = psycopg.connect(POSTGRES_URL)
    conn.execute(sql, params)
    return conn


def test_a_request_stuck_behind_a_lock_is_a_503_after_the_lock_timeout_and_commits_nothing(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = isolated_settings(database_url=pg_url, db_lock_timeout_seconds=1)
    with TestClient(create_app(settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        hold = client.post("/holds", json={"slot_id": slot}, headers=alice.auth).json()["hold_id"]
        engine = client.app.state.db.engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "1s"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "10s"
        blocker = _blocker("SELECT 1 FROM holds WHERE id = %(id)s FOR UPDATE", id=hold)
        # Whatever happens, the blocker lets go after 4 s: without a timeout the request waits for it.
        timer = threading.Timer(4, blocker.rollback)
        timer.start()
        try:
            started = time.monotonic()
            response = client.post(f"/holds/{hold}/confirm", headers=alice.auth)
            waited = time.monotonic() - started
        finally:
            timer.cancel()
            timer.join()
            blocker.close()
        assert_problem(response, 503, "DATABASE_BUSY")
        assert 0.9 < waited < 3, waited
        assert _logged_503s(caplog, "DATABASE_BUSY")
        time.sleep(0.2)
        assert client.get(f"/holds/{hold}", headers=alice.auth).json()["status"] == "HOLD"
        with engine.connect() as conn:
            kinds = conn.execute(
                text("SELECT kind FROM slot_events WHERE hold_id = :h"), {"h": uuid.UUID(hold)}
            ).scalars()
            assert list(kinds) == ["HELD"]


def test_a_confirm_that_waited_for_a_lock_past_the_hold_s_expiry_is_judged_by_the_time_it_runs(pg_url: str) -> None:
    # The hold lives 1 s; another session holds its row for 2 s. A confirm sent while the hold
    # was live gets the row only after it lapsed: judged with a clock read before that wait,
    # it would confirm an expired hold.
    settings = isolated_settings(database_url=pg_url, hold_ttl_seconds=1)
    with TestClient(create_app(settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        hold = client.post("/holds", json={"slot_id": slot}, headers=alice.auth).json()["hold_id"]
        blocker = _blocker("SELECT 1 FROM holds WHERE id = %(id)s FOR UPDATE", id=hold)
        timer = threading.Timer(2, blocker.rollback)
        timer.start()
        try:
            response = client.post(f"/holds/{hold}/confirm", headers=alice.auth)
        finally:
            timer.join()
            blocker.close()
        assert_problem(response, 410, "HOLD_EXPIRED")


def test_a_hold_that_waited_for_its_slot_s_lock_is_stamped_with_the_time_it_runs(pg_url: str) -> None:
    settings = isolated_settings(database_url=pg_url)
    with TestClient(create_app(settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        blocker = _blocker("SELECT 1 FROM time_slots WHERE id = %(id)s FOR UPDATE", id=slot)
        released_at: list[datetime] = []

        def let_go() -> None:
            released_at.append(datetime.now(UTC))
            blocker.rollback()

        timer = threading.Timer(1.5, let_go)
        timer.start()
        try:
            response = client.post("/holds", json={"slot_id": slot}, headers=alice.auth)
        finally:
            timer.join()
            blocker.close()
        assert response.status_code == 201, response.text
        assert datetime.fromisoformat(response.json()["created_date"]) >= released_at[0]


def test_a_nul_byte_the_driver_refuses_is_a_logged_422_not_a_silent_503(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # psycopg refuses NUL in text before sending it: a DataError with no SQL state, which was
    # reported as "database unavailable". It is the request's value, not the database.
    settings = isolated_settings(database_url=pg_url)
    app = create_app(settings)

    async def store_a_nul(request: Request) -> None:
        # Names are refused by validation first (tests/test_edge.py); this reaches the driver
        # the way any unvalidated string would, through the app's own error handling.
        db = request.app.state.db
        await db.run(lambda session: session.execute(text("SELECT CAST(:v AS text)"), {"v": "Nul\x00Name"}))

    app.add_api_route("/store-a-nul", store_a_nul, methods=["POST"])
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/users", json={"name": "Nul\x00Name", "handle": f"nul_{uuid.uuid4().hex[:8]}"})
        assert_problem(response, 422, "VALIDATION_ERROR")  # refused before any driver sees it
        response = client.post("/store-a-nul")
        assert_problem(response, 422, "UNSTORABLE_VALUE")
        assert [r for r in caplog.records if r.name == "booking.errors" and "UNSTORABLE_VALUE" in r.getMessage()]
