"""Database failures the domain does not handle still become problem documents, never a 500."""

import sqlite3

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from config import Settings
from main import create_app
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
