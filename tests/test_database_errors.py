"""Database failures the domain does not handle still become problem documents, never a 500."""

import contextlib
import sqlite3
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from config import Settings
from main import create_app
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import assert_problem, isolated_settings, make_slot, make_user


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


FAILURES = {
    "deadlock": (OperationalError("UPDATE holds", {}, _PgError("40P01")), 409, "TRANSACTION_CONFLICT"),
    "serialization": (OperationalError("UPDATE holds", {}, _PgError("40001")), 409, "TRANSACTION_CONFLICT"),
    "constraint": (IntegrityError("INSERT", {}, _PgError("23505")), 409, "CONSTRAINT_VIOLATION"),
    "sqlite-locked": (
        OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")),
        503,
        "DATABASE_BUSY",
    ),
    "pool-exhausted": (PoolTimeout("QueuePool limit reached"), 503, "DATABASE_BUSY"),
    "connection-lost": (OperationalError("SELECT 1", {}, _PgError("08006")), 503, "DATABASE_BUSY"),
    "lock-timeout": (OperationalError("UPDATE holds", {}, _PgError("55P03")), 503, "DATABASE_BUSY"),
    "statement-timeout": (OperationalError("SELECT", {}, _PgError("57014")), 503, "DATABASE_BUSY"),
    "too-many-connections": (OperationalError("SELECT", {}, _PgError("53300")), 503, "DATABASE_BUSY"),
    "admin-shutdown": (OperationalError("SELECT", {}, _PgError("57P01")), 503, "DATABASE_BUSY"),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_database_failure_becomes_a_problem_not_a_500(settings: Settings, failure: str) -> None:
    error, status, code = FAILURES[failure]
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise error

    with TestClient(app, raise_server_exceptions=False) as client:
        assert_problem(client.get("/boom"), status, code)


def test_a_real_sqlite_write_lock_held_elsewhere_is_a_503_and_the_service_keeps_answering(tmp_path) -> None:
    # Another process (here: a plain sqlite3 connection) holds the file's write lock past the
    # busy timeout. The hold's BEGIN IMMEDIATE gives up: 503 DATABASE_BUSY, not a 500; reads
    # (WAL) and /health still answer meanwhile, and the hold works once the lock is gone.
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    settings = isolated_settings(database_url=url, sqlite_busy_timeout_seconds=0.2)
    with TestClient(create_app(settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            response = client.post("/holds", json={"slot_id": slot}, headers=alice.auth)
            assert_problem(response, 503, "DATABASE_BUSY")
            assert response.headers["retry-after"] == "1"
            assert client.get(f"/slots/{slot}", headers=alice.auth).json()["status"] == "AVAILABLE"
            assert client.get("/health").status_code == 200
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert client.post("/holds", json={"slot_id": slot}, headers=alice.auth).status_code == 201


def test_a_write_waits_for_a_sqlite_write_lock_held_elsewhere_and_leaves_the_busy_timeout_as_it_was(
    tmp_path,
) -> None:
    # The writer asks again for the lock (db._begin_writer) instead of SQLite's busy handler:
    # with the handler off, a single attempt would fail at once. It waits, within the busy
    # timeout, and gets the lock once the other process lets go; afterwards the connection
    # waits in SQLite's handler again for everything else.
    import threading

    path = tmp_path / "busy.db"
    settings = isolated_settings(database_url=f"sqlite:///{path}", sqlite_busy_timeout_seconds=5)
    with TestClient(create_app(settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        releaser = threading.Timer(0.3, blocker.rollback)
        releaser.start()
        try:
            assert client.post("/holds", json={"slot_id": slot}, headers=alice.auth).status_code == 201
        finally:
            releaser.join()
            blocker.close()
        with client.app.state.db.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


def test_a_worker_starting_while_another_writes_a_new_sqlite_file_waits_instead_of_failing(tmp_path) -> None:
    """Workers starting together on a new file: one migrates (holding the write lock) while the
    others connect. Switching a file to WAL does not wait in SQLite's busy handler, so without the
    service's own wait the others failed at start-up with "database is locked"."""
    import threading

    from db import Database

    path = tmp_path / "new.db"
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # as a migrating worker would
    blocker.execute("CREATE TABLE t (x)")
    releaser = threading.Timer(0.5, blocker.commit)
    releaser.start()
    try:
        db = Database(isolated_settings(database_url=f"sqlite:///{path}", sqlite_busy_timeout_seconds=5))
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        db.dispose()
    finally:
        releaser.join()
        blocker.close()


# --- PostgreSQL: connections that drop (no ping before use; one retry, only when it is safe) -------


@pytest.fixture
def postgres_settings(postgres_engine: Engine) -> Settings:
    empty_postgres(postgres_engine)
    return isolated_settings(database_url=POSTGRES_URL)


def _terminate(engine: Engine, where: str, **params: object) -> int:
    """Terminate the service's backends matching `where`, waiting until each has gone; return how many."""
    with engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                f" WHERE datname = current_database() AND application_name = 'booking-api' AND {where}"
            ),
            params,
        ).scalar_one()
        conn.commit()
    return int(killed)


def _kill_pooled_connections(engine: Engine) -> None:
    assert _terminate(engine, "pid <> pg_backend_pid()") > 0, "the app had no pooled connection to drop"


def test_postgres_connections_dropped_between_requests_are_reopened_and_the_request_succeeds(
    postgres_engine: Engine, postgres_settings: Settings
) -> None:
    # Every pooled connection is terminated between requests (a restart, a reaper). Nothing
    # pings a connection before use: the first statement on a dead one fails before anything
    # could have committed, and the request's work runs once more on a fresh connection.
    with TestClient(create_app(postgres_settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        assert client.get(f"/slots/{slot}", headers=alice.auth).status_code == 200

        _kill_pooled_connections(postgres_engine)
        assert client.get(f"/slots/{slot}", headers=alice.auth).json()["status"] == "AVAILABLE"  # a read

        room_id = client.get(f"/slots/{slot}").json()["room_id"]
        assert client.get("/slots", params={"room_id": room_id}).status_code == 200  # the room's board, kept
        engine = client.app.state.db.engine  # type: ignore[attr-defined]
        opened = [engine.connect() for _ in range(3)]  # several pooled connections, all dropped below
        for connection in opened:
            connection.close()
        _kill_pooled_connections(postgres_engine)
        listing = client.get("/slots", params={"room_id": room_id})  # the board's head read, on the driver
        assert listing.status_code == 200, listing.text

        _kill_pooled_connections(postgres_engine)
        created = client.post("/holds", json={"slot_id": slot}, headers=alice.auth)  # a read, then a write
        assert created.status_code == 201, created.text
        hold_id = created.json()["hold_id"]

        _kill_pooled_connections(postgres_engine)
        confirmed = client.post(f"/holds/{hold_id}/confirm", headers=alice.auth)  # a write alone
        assert confirmed.status_code == 200, confirmed.text

        _kill_pooled_connections(postgres_engine)
        keyed = client.post(
            "/holds", json={"slot_id": make_slot(client)}, headers={**alice.auth, "Idempotency-Key": "k-1"}
        )
        assert keyed.status_code == 201, keyed.text
        # Each change made once: the retries repeated nothing that had committed.
        holds = client.get("/holds", headers=alice.auth).json()["items"]
        assert sorted(h["status"] for h in holds) == ["CONFIRMED", "HOLD"]


@pytest.mark.parametrize("keyed", [False, True], ids=["commit-batched-with-the-log", "commit-by-the-key"])
def test_postgres_a_write_whose_commit_fate_is_unknown_is_not_run_again(
    postgres_engine: Engine, postgres_settings: Settings, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    # The connection drops just as the hold's COMMIT is sent. Whether PostgreSQL committed it
    # cannot be known from here (here it did not: the backend was gone first), so running the
    # work again could make the change twice: the client gets a 503 and decides (an
    # Idempotency-Key makes its retry safe), and the service does not retry on its own.
    # Unkeyed, the COMMIT goes out in the change log's batch; keyed, in SQLAlchemy's commit
    # after the key is stored.
    import db
    import rawsql

    with TestClient(create_app(postgres_settings), raise_server_exceptions=False) as client:
        alice, slot = make_user(client), make_slot(client)
        assert client.get("/users/me", headers=alice.auth).status_code == 200  # the token's first use, written
        engine = client.app.state.db.engine  # type: ignore[attr-defined]
        armed = {"on": False, "killed": 0}

        def drop(conn: Connection) -> None:
            dbapi = conn.connection.dbapi_connection
            # A write's COMMIT (a read's end commits nothing: no transaction is open).
            if armed["on"] and dbapi.info.transaction_status == TransactionStatus.INTRANS:
                armed["on"] = False
                armed["killed"] += _terminate(postgres_engine, "pid = :pid", pid=dbapi.info.backend_pid)

        def drop_before_a_batched_commit(conn: Connection, steps: Sequence[rawsql.Step]) -> list[list[rawsql.Record]]:
            if db._COMMIT in steps:
                drop(conn)
            return execute_batch(conn, steps)

        execute_batch = rawsql.execute_batch
        monkeypatch.setattr(rawsql, "execute_batch", drop_before_a_batched_commit)
        event.listen(engine, "commit", drop)
        armed["on"] = True
        headers = {**alice.auth, "Idempotency-Key": "k-fate"} if keyed else alice.auth
        response = client.post("/holds", json={"slot_id": slot}, headers=headers)
        event.remove(engine, "commit", drop)
        monkeypatch.undo()
        assert armed["killed"] == 1
        assert_problem(response, 503, "DATABASE_BUSY")
        assert client.get(f"/slots/{slot}", headers=alice.auth).json()["status"] == "AVAILABLE"
        assert client.get("/holds", headers=alice.auth).json()["items"] == []
        assert client.post("/holds", json={"slot_id": slot}, headers=headers).status_code == 201


@pytest.mark.parametrize("bind", ["engine", "one connection"])
def test_postgres_reads_run_without_a_transaction_and_writes_still_run_in_one(
    postgres_settings: Settings, bind: str
) -> None:
    # READ COMMITTED reads each statement's own snapshot in a transaction or not: a read block
    # saves BEGIN and COMMIT. The write after it on the same session must be a transaction again
    # (its row locks last until COMMIT), not left in autocommit by the read, whether the session
    # checks a connection out per transaction or holds one for the whole unit of work.
    from db import Database, read_transaction, write_transaction

    def status(session: Session) -> TransactionStatus:
        return session.connection().connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr,no-any-return]

    db = Database(postgres_settings)
    db.engine.connect().close()  # as start-up does: the engine learns the server's isolation level
    try:
        with contextlib.ExitStack() as stack:
            target = db.engine if bind == "engine" else stack.enter_context(db.engine.connect())
            session = stack.enter_context(Session(target))
            for _ in range(2):
                with read_transaction(session):
                    session.execute(text("SELECT 1"))
                    assert status(session) == TransactionStatus.IDLE
                with write_transaction(session):
                    session.execute(text("SELECT 1"))
                    assert status(session) == TransactionStatus.INTRANS
                with pytest.raises(RuntimeError), write_transaction(session):
                    raise RuntimeError("rolled back")
                # A write sends its own BEGIN, with the driver in autocommit mode until it ends:
                # after it, committed or rolled back, a statement begins a transaction again.
                session.execute(text("SELECT 1"))
                assert status(session) == TransactionStatus.INTRANS
                session.rollback()
            with db.engine.connect() as other:  # and a connection given back to the pool in that mode is not
                assert other.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
    finally:
        db.dispose()


def test_postgres_a_keyed_write_dropped_before_its_commit_runs_again_once(
    postgres_engine: Engine, postgres_settings: Settings
) -> None:
    # The connection drops while the Idempotency-Key is being stored, in the change's own
    # transaction, before its COMMIT: PostgreSQL rolled both back, so the work runs again,
    # from the start (the key's claim too), and the change is made once.
    with TestClient(create_app(postgres_settings)) as client:
        alice, slot = make_user(client), make_slot(client)
        assert client.get("/users/me", headers=alice.auth).status_code == 200
        engine = client.app.state.db.engine  # type: ignore[attr-defined]
        killed = []

        @event.listens_for(engine, "before_cursor_execute")
        def drop_storing_the_key(conn: Connection, _cursor: object, statement: str, *_args: object) -> None:
            if not killed and statement.startswith("INSERT INTO idempotency_keys"):
                killed.append(
                    _terminate(postgres_engine, "pid = :pid", pid=conn.connection.dbapi_connection.info.backend_pid)
                )

        response = client.post("/holds", json={"slot_id": slot}, headers={**alice.auth, "Idempotency-Key": "k-2"})
        event.remove(engine, "before_cursor_execute", drop_storing_the_key)
        assert killed == [1]
        assert response.status_code == 201, response.text
        again = client.post("/holds", json={"slot_id": slot}, headers={**alice.auth, "Idempotency-Key": "k-2"})
        assert again.headers["idempotent-replayed"] == "true" and again.json() == response.json()
        assert [h["hold_id"] for h in client.get("/holds", headers=alice.auth).json()["items"]] == [
            response.json()["hold_id"]
        ]
