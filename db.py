"""Engine per backend, Database.run (a request's database call), transactions, schema and demo seed."""

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from anyio import to_thread
from sqlalchemy import Connection, Engine, create_engine, delete, event, literal, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

import changelog
import rawsql
from clock import utc_now
from config import Settings
from fastread import FastReads
from models import Base, Room, ServiceSecret, TimeSlot, User

# Execution option read by the SQLite "begin" hook: writers take the write lock up front.
_BEGIN_MODE = "sqlite_begin_mode"
# session.info key: the request's idempotency claim (idempotency.Claim). A write transaction lets
# it check the key once the write's locks are held, and leaves the COMMIT to it, so the key and
# its response are stored in the change's own transaction.
IDEMPOTENCY_CLAIM = "idempotency.claim"
ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
# Any fixed number: PostgreSQL advisory-lock key that serialises migrations across workers.
_MIGRATION_LOCK_KEY = 7_240_001

DEMO_USERS = (("Alice Demo", "alice", "alice@example.com"), ("Bob Demo", "bob", "bob@example.com"))
DEMO_ROOMS = (("Pharaoh's Tomb", 6), ("Haunted Library", 4), ("Space Station", 8))
DEMO_DAYS = 3
DEMO_HOURS = range(10, 22)  # one-hour slots from 10:00 to 22:00 UTC

# SQLAlchemy's own QueuePool defaults for a SQLite file, spelled out so that this class knows its limits.
_SQLITE_FILE_POOL = {"pool_size": 5, "max_overflow": 10}

T = TypeVar("T")


def _is_memory_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def normalise_url(url: str) -> str:
    """Pick the project's driver for the plain URL forms users paste."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Database:
    """One engine for the process, plus what keeps an in-memory SQLite database alive."""

    def __init__(self, settings: Settings) -> None:
        self._anchor: sqlite3.Connection | None = None
        url = normalise_url(settings.database_url)
        connect_args: dict[str, object] = {}  # PostgreSQL's, for the pool and the fast reads alike
        if _is_memory_sqlite(url):
            self.engine = self._memory_sqlite_engine(settings)
            self._max_overflow = 0
        elif make_url(url).get_backend_name() == "sqlite":
            self.engine = create_engine(
                url,
                poolclass=QueuePool,
                **_SQLITE_FILE_POOL,
                connect_args={"timeout": settings.sqlite_busy_timeout_seconds, "check_same_thread": False},
            )
            self._max_overflow = _SQLITE_FILE_POOL["max_overflow"]
            _install_sqlite_hooks(self.engine, wal=True, busy_timeout=settings.sqlite_busy_timeout_seconds)
        else:
            self._max_overflow = settings.db_max_overflow
            connect_args = {
                "application_name": "booking-api",
                "connect_timeout": settings.db_connect_timeout_seconds,
                "options": _postgres_timeouts(settings.db_lock_timeout_seconds, settings.db_statement_timeout_seconds),
            }
            self.engine = create_engine(
                url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                pool_timeout=settings.db_pool_timeout_seconds,
                # No ping per checkout (a round trip per transaction): a connection found dropped
                # is recovered by running the request's work once more (Database.run).
                connect_args=connect_args,
            )
            _install_postgres_hooks(self.engine)
        self.backend = self.engine.dialect.name
        # The reads a request can answer on the event loop alone (fastread.py).
        self.reads = FastReads(
            self.engine,
            connections=settings.db_fast_read_connections,
            connect_args=connect_args,
        )
        self.in_memory = self._anchor is not None
        # SQLite is in-process and lets one writer in at a time, so a request's database work
        # runs on the event loop, one unit at a time: worker threads would fight for the write
        # lock through SQLite's sleep-and-retry busy handler (see
        # docs/performance.md#sqlite-on-the-event-loop). The price: while another process holds
        # the write lock, this worker waits (up to SQLITE_BUSY_TIMEOUT_SECONDS, then 503) and
        # answers nothing else. PostgreSQL waits on the network: one worker-thread call.
        self.on_event_loop = self.backend == "sqlite"
        self.event_retention = timedelta(seconds=settings.event_retention_seconds)
        # Called after a commit that appended to the change log (the live board's local wake-up).
        self.on_log_written: Callable[[], None] | None = None

    def _memory_sqlite_engine(self, settings: Settings) -> Engine:
        # One named shared-cache database per Database object, reached through one pooled
        # connection (pool_size=1) that requests use in turn on the event loop (Database.run),
        # so transactions never interleave on one connection (what breaks the StaticPool
        # recipe) and SQLite's one-writer rule never meets a lock error. The anchor connection
        # keeps the database alive even if the pool ever replaces its connection.
        name = f"file:booking-{uuid.uuid4().hex}?mode=memory&cache=shared"
        self._anchor = sqlite3.connect(name, uri=True, check_same_thread=False)
        engine = create_engine(
            f"sqlite:///{name}&uri=true",
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=settings.sqlite_busy_timeout_seconds,
            connect_args={"check_same_thread": False},
        )
        _install_sqlite_hooks(engine, wal=False)
        return engine

    @property
    def max_connections(self) -> int:
        """How many connections this process may hold at once."""
        pool = self.engine.pool
        return pool.size() + self._max_overflow if isinstance(pool, QueuePool) else 1

    def pool_state(self) -> dict[str, object]:
        """What /health reports about this process's connection pool."""
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return {"pool": type(pool).__name__}
        return {
            "pool": {
                "size": pool.size(),
                "checked_out": pool.checkedout(),
                "idle": pool.checkedin(),
                "overflow": max(pool.overflow(), 0),
                "max_overflow": self._max_overflow,
                "timeout_seconds": pool.timeout(),
            }
        }

    def dispose(self) -> None:
        """Close every connection (and so free an in-memory database)."""
        self.reads.close()
        self.engine.dispose()
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run one request's database work, `work(session)`, in a fresh session; return its result.

        The way routes reach the database: one call per request (plus one for a token this
        process has not seen yet), on the event loop for SQLite and in one worker-thread call
        for PostgreSQL. `work` must end every transaction it opens
        (read_transaction / write_transaction).
        """
        if self.on_event_loop:
            return self._run(work)
        return await to_thread.run_sync(self._run_retrying, work)

    def _run_retrying(self, work: Callable[[Session], T]) -> T:
        """`_run`, once more if the connection dropped before this work could have committed a write.

        A pooled connection is not pinged before use, so one that PostgreSQL dropped meanwhile
        (a restart, an idle-connection reaper, pg_terminate_backend) fails the first statement
        sent on it; SQLAlchemy then discards it and every connection opened before it, and the
        work runs again on a fresh one. Only when no COMMIT of a transaction that may have
        written was sent: a write whose COMMIT went out on a connection that then dropped may
        have committed, and running it again could make the change twice (a second hold, a
        second booking), so that failure reaches the caller as a 503 like any other.
        A transaction that dropped before its COMMIT was rolled back by PostgreSQL.
        """
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            try:
                return self._run(work)
            except DBAPIError as exc:
                if not exc.connection_invalidated or attempt.commit_sent:
                    raise
            return self._run(work)
        finally:
            _ATTEMPT.reset(token)

    def _run(self, work: Callable[[Session], T]) -> T:
        # One pooled connection for the whole unit of work, not one checkout (and reset) per
        # transaction: a hold's refusal read and its write are two transactions.
        with (
            self.engine.connect() as connection,
            Session(connection, expire_on_commit=False, info={changelog.RETENTION: self.event_retention}) as session,
        ):
            try:
                return work(session)
            finally:
                if session.info.pop(changelog.WRITTEN, False) and self.on_log_written is not None:
                    self.on_log_written()


@dataclass
class _Attempt:
    """One run of a request's work on PostgreSQL, as the retry rule (Database._run_retrying) sees it."""

    commit_sent: bool = False  # a COMMIT of a transaction that may have written went out
    reading: bool = False  # inside read_transaction: its end commits nothing written


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("db_attempt", default=None)


def _note_commit(_connection: Connection) -> None:
    """Engine hook, run before a COMMIT is sent: from here on the work's outcome may be committed."""
    attempt = _ATTEMPT.get()
    if attempt is not None and not attempt.reading:
        attempt.commit_sent = True


def _postgres_timeouts(lock_seconds: float, statement_seconds: float) -> str:
    """Session settings every PostgreSQL connection starts with (libpq `options`); 0 means none."""
    return f"-c lock_timeout={round(lock_seconds * 1000)} -c statement_timeout={round(statement_seconds * 1000)}"


def _use_wal(cursor: DBAPICursor, busy_timeout: float) -> None:
    """Put the file in WAL mode (once: the mode is stored in the file), waiting out other writers.

    Switching the mode needs the file to itself, and SQLite answers "database is locked" at once
    instead of waiting in its busy handler: workers starting together on a new file would fail
    while one of them runs the migrations. So the mode is read first (an existing WAL file needs
    nothing) and the switch retried until the busy timeout.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_SQLITE_BEGIN = {mode: rawsql.Statement(text(f"BEGIN {mode}")) for mode in ("DEFERRED", "IMMEDIATE")}


def _install_sqlite_hooks(engine: Engine, *, wal: bool, busy_timeout: float = 5.0) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if wal:
            _use_wal(cursor, busy_timeout)
            # FULL: a booking acknowledged to a client survives a power cut, not just a crash.
            cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # BEGIN IMMEDIATE for writers: a deferred transaction that later upgrades to a writer
        # fails at once with "database is locked" when another process wrote meanwhile.
        # Through rawsql, which translates driver errors as SQLAlchemy does: a lock timeout here
        # must arrive as a DBAPIError (503 DATABASE_BUSY), and "begin" hooks run outside
        # SQLAlchemy's own translation.
        mode = conn.get_execution_options().get(_BEGIN_MODE, "DEFERRED")
        if mode == "IMMEDIATE" and wal:
            _begin_writer(conn, busy_timeout)
        else:
            rawsql.execute(conn, _SQLITE_BEGIN[mode], {})


# How often a writer asks again for a SQLite file's write lock that another process holds.
_LOCK_POLL_SECONDS = 0.0005


def _begin_writer(conn: Connection, busy_timeout: float) -> None:
    """BEGIN IMMEDIATE on a SQLite file, asking again every half millisecond while another process writes.

    SQLite's own busy handler sleeps in growing steps (1, 2, 5, 10, ... up to 100 ms) rather
    than being woken when the lock is free, so under sustained writes from two workers the
    unlucky waiter slept far longer than the ~1 ms the other's write held the lock
    (docs/performance.md#latest-run). Here the handler is off for the attempt and
    the wait is a short poll, up to the same SQLITE_BUSY_TIMEOUT_SECONDS; the last refusal
    arrives translated, as a 503 DATABASE_BUSY.
    """
    driver = conn.connection.driver_connection
    assert driver is not None
    deadline = time.monotonic() + busy_timeout
    driver.execute("PRAGMA busy_timeout = 0").fetchall()
    try:
        while True:
            try:
                rawsql.execute(conn, _SQLITE_BEGIN["IMMEDIATE"], {})
                return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() >= deadline:
                    raise
            time.sleep(_LOCK_POLL_SECONDS)
    finally:
        driver.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}").fetchall()


# PostgreSQL: a write transaction's own BEGIN and COMMIT, sent in batches with its other statements.
_BEGIN = rawsql.Statement(text("BEGIN"))
_COMMIT: rawsql.Step = (rawsql.Statement(text("COMMIT")), {})


@contextmanager
def write_transaction(session: Session, *locks: rawsql.Statement, **lock_params: object) -> Iterator[datetime]:
    """Run the block as one write transaction and yield the time its decisions are judged at.

    The clock is read only once this writer holds the locks that decide: on SQLite the write
    lock (BEGIN IMMEDIATE); on PostgreSQL the rows that `locks` (SELECT … FOR UPDATE statements,
    run in order with `lock_params`) lock. A request that waited for a lock is then judged by the time it runs,
    not the time it arrived, and writes under one lock commit in the order of their timestamps.

    On PostgreSQL the transaction costs two round trips besides the block's own statements:
    BEGIN goes in one batch with the locks, and COMMIT in one with the change log's append
    (docs/design.md#round-trips-of-a-write).
    """
    claim = session.info.get(IDEMPOTENCY_CLAIM)
    if claim is not None and claim.written:
        # One change per key: ending the open transaction here would commit the first change
        # without its key. Refused before anything is committed.
        raise RuntimeError("a request with an Idempotency-Key wrote twice")
    if session.in_transaction():
        # A read left open here would make SQLAlchemy ignore IMMEDIATE (the transaction has
        # begun), and a deferred transaction that read first fails with "database is locked"
        # when another process writes before it does. End it so this one begins as a writer.
        session.commit()
    connection = session.connection(execution_options={_BEGIN_MODE: "IMMEDIATE"})
    # The option has done its work (the transaction has begun); on a connection that serves
    # the request's later transactions too (Database._run), those begin as readers again.
    connection.execution_options(**{_BEGIN_MODE: "DEFERRED"})
    pipelined = connection.dialect.name == "postgresql"
    # psycopg sends its own BEGIN alone, and waits for it, before the first statement; in
    # autocommit mode it sends none, and ours goes in the locks' batch. Only for a transaction
    # this block also ends: a keyed write is committed later, by its claim, so psycopg begins it.
    explicit = pipelined and claim is None
    driver: Any = connection.connection.driver_connection
    if explicit:
        driver.autocommit = True
    try:
        if pipelined:
            # SQLite's write lock already serialises every writer; PostgreSQL's row locks would
            # otherwise be taken by the statements below, after the clock was read. The clock
            # is read once the batch's results (the locks) are back.
            begin: list[rawsql.Step] = [(_BEGIN, {})] if explicit else []
            rawsql.execute_batch(connection, [*begin, *((lock, lock_params) for lock in locks)])
        now = utc_now()
        if claim is not None:
            claim.begin(session, now)
        yield now
        session.flush()  # ORM rows before the change log (its events may read them) and the COMMIT
        if claim is not None:
            changelog.flush(session, now)  # the change log, in the change's own transaction
            claim.written = True  # committed by the claim, with the response it stores
        elif explicit:
            _note_commit(connection)  # the COMMIT goes out in the batch below (the retry rule)
            changelog.flush(session, now, then=[_COMMIT])
            session.commit()  # SQLAlchemy's side of it: the transaction has ended, nothing is sent
        else:
            changelog.flush(session, now)
            session.commit()
    except BaseException:
        changelog.discard(session)
        session.rollback()
        raise
    finally:
        # The transaction has ended. A session on the engine has given the connection back
        # already: the pool's check-in hook has done this (_install_postgres_hooks).
        if explicit and not (connection.closed or connection.invalidated):
            # Refused when not idle (a rollback failed without dropping the connection): the
            # error on its way out is the one to report; the pool's reset and check-in hook finish this.
            with suppress(connection.dialect.loaded_dbapi.Error):
                driver.autocommit = False


def _install_postgres_hooks(engine: Engine) -> None:
    event.listen(engine, "commit", _note_commit)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: DBAPIConnection | None, _record: ConnectionPoolEntry) -> None:
        # A connection goes back to the pool out of write_transaction's autocommit mode, ended (or discarded).
        if dbapi_connection is not None and dbapi_connection.autocommit and not dbapi_connection.closed:
            dbapi_connection.autocommit = False


def probe_write(session: Session) -> None:
    """Run a write that changes nothing, in a transaction rolled back: does the database take writes?

    A read-only file or connection, a read-only PostgreSQL (a standby, default_transaction_read_only)
    or a write lock held past the timeouts fail it. A full disk fails it only where the write
    needs new space, which a rolled-back write that changes nothing does not: see
    docs/operations.md#crashes-and-restarts.
    """
    try:
        session.connection(execution_options={_BEGIN_MODE: "IMMEDIATE"})
        session.execute(delete(ServiceSecret).where(literal(False)))
    finally:
        session.rollback()


@contextmanager
def read_transaction(session: Session) -> Iterator[datetime]:
    """Run reads in one transaction and yield the time they are judged at; end it on exit.

    A transaction left open would keep its connection (SQLite: its snapshot; PostgreSQL: a
    pooled connection) past the end of the request's unit of work, so none outlives its block.

    On PostgreSQL at READ COMMITTED (its default) every statement reads its own snapshot, in a
    transaction or not, so the block's statements run in autocommit mode: the same view of the
    data, without the BEGIN and COMMIT round trips. Reads that must agree with each other are
    written for that (see live.open_stream); a block that takes locks is a write_transaction.
    """
    # A transaction left open (a write's, awaiting its idempotency key) is not this block's to
    # call a read: its COMMIT here counts as a write's for the retry rule.
    attempt = None if session.in_transaction() else _ATTEMPT.get()
    if attempt is not None:
        attempt.reading = True
    autocommit: Connection | None = None
    try:
        if not session.in_transaction() and _statements_are_snapshots(session):
            autocommit = session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        try:
            yield utc_now()
        except BaseException:
            session.rollback()
            raise
        session.commit()  # not rollback: rollback would expire the rows the block loaded
    finally:
        if attempt is not None:
            attempt.reading = False
        if autocommit is not None and not (autocommit.closed or autocommit.invalidated):
            # A connection that outlives the block (a session bound to one connection for the
            # whole unit of work) must begin the unit's next transaction as a transaction.
            autocommit.execution_options(isolation_level=autocommit.default_isolation_level)


def _statements_are_snapshots(session: Session) -> bool:
    """Does each statement read its own snapshot anyway (PostgreSQL, READ COMMITTED)?"""
    dialect = session.get_bind().dialect
    # Learnt from the server on the engine's first connection; until then, a transaction.
    return dialect.name == "postgresql" and getattr(dialect, "default_isolation_level", None) == "READ COMMITTED"


def create_schema(engine: Engine) -> None:
    """Create every table and index that does not exist yet (in-memory databases, benchmarks)."""
    Base.metadata.create_all(engine)


def prepare_schema(db: Database) -> None:
    """Bring the schema to the current version: Alembic for real databases, create_all in memory."""
    if db.in_memory:
        create_schema(db.engine)
        return
    # One transaction holding the database's own lock, so workers starting together migrate once.
    with db.engine.connect().execution_options(**{_BEGIN_MODE: "IMMEDIATE"}) as conn, conn.begin():
        if db.backend == "postgresql":
            # Workers wait here while the first migrates, and a migration may take long: the
            # request timeouts are not meant for start-up.
            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
        config = Config(str(ALEMBIC_INI))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def seed_demo_data(session: Session, now: datetime | None = None) -> list[User]:
    """Create demo users, rooms and upcoming one-hour slots once; return the demo users created by this call.

    An empty list means the database was seeded before (or by another worker at the same
    moment): the caller mints and prints demo tokens only for users it has just created, so
    restarts on a persistent database do not pile up never-expiring tokens.
    """
    now = now or utc_now()
    created: list[User] = []
    try:
        with write_transaction(session):
            if session.scalar(select(User.id).where(User.handle == DEMO_USERS[0][1])) is None:
                created = [User(name=name, handle=handle, email=email) for name, handle, email in DEMO_USERS]
                session.add_all(created)
                for room_name, capacity in DEMO_ROOMS:
                    room = Room(name=room_name, capacity=capacity)
                    session.add(room)
                    session.flush()
                    session.add_all(_demo_slots(room.id, now))
    except IntegrityError:
        return []  # another worker seeded the same database at the same moment
    return sorted(created, key=lambda user: user.handle)


def _demo_slots(room_id: uuid.UUID, now: datetime) -> list[TimeSlot]:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    slots = []
    for day in range(DEMO_DAYS + 1):
        for hour in DEMO_HOURS:
            start = midnight + timedelta(days=day, hours=hour)
            if start > now:
                slots.append(TimeSlot(room_id=room_id, start_time=start, end_time=start + timedelta(hours=1)))
    return slots
