"""One-statement reads on the event loop: no Session, no transaction, no worker thread.

A few reads decide a request on their own and are worth answering this way: the change log's
head before a room board answers a listing, and the read that refuses a hold on a taken slot.
`FastReads.fetch` runs such a read at READ COMMITTED outside any transaction (so it sees every
commit before it was sent) and gives its rows, or None when it could not: the caller then takes
its usual path through `Database.run`, which meets the same failure and reports it as every
other request does (a 503 with its cause logged). A fast read never decides an error itself.

- SQLite: a pooled driver connection, checked out and back around the read, on the event loop
  like all SQLite work (db.py): the Session and SQLAlchemy's Connection around one indexed read
  cost several times the read.
- PostgreSQL: a few psycopg async connections per process, in autocommit, on the event loop:
  one round trip, without the hand-off to a worker thread and back that a synchronous driver
  call needs (docs/performance.md#the-fast-path-issue-11). They are kept apart from the
  engine's pool, at most `DB_FAST_READ_CONNECTIONS` per process (0: none; every read then takes
  the usual path), and bound to the event loop they were opened on. Concurrent requests that
  need the same read share one (`FastReads.shared`), so a few connections serve a crowd.
"""

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar, cast

import psycopg
from sqlalchemy import Engine

import rawsql

log = logging.getLogger("booking.fastread")

# After a failed connect, fast reads stand aside this long: the usual path reports the outage,
# and each request does not first wait out a connect timeout of its own here.
RECONNECT_PAUSE_SECONDS = 1.0
# The most a fast read may take, waiting for a connection included; longer, and the request
# takes the usual path (whose pool timeout and 503 apply): a connection silently dropped by the
# network would otherwise hold its reads, and every listing sharing them, until TCP gives up.
READ_TIMEOUT_SECONDS = 1.0

Connection = psycopg.AsyncConnection[Any]
Params = Mapping[str, object] | Callable[[], Mapping[str, object]]
"""A read's parameters, or a function giving them once a connection is held (a `now` read then)."""
T = TypeVar("T")


class FastReads:
    """Reads of one statement answered on the event loop; None when this backend or moment cannot."""

    def __init__(self, engine: Engine, *, connections: int, connect_args: Mapping[str, Any]) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._postgres = engine.dialect.name == "postgresql"
        self._size = connections if self._postgres else 0
        if self._postgres:
            _, options = engine.dialect.create_connect_args(engine.url)
            self._connect_kwargs: dict[str, Any] = {**options, **connect_args, "autocommit": True}
        self._pool: _LoopPool | None = None
        self._paused_until = 0.0
        self._closed = False
        self._sharing: _SharedReads | None = None

    @property
    def enabled(self) -> bool:
        """Whether reads are answered here at all (SQLite always; PostgreSQL with connections to spare)."""
        return not self._postgres or self._size > 0

    async def fetch(self, statement: rawsql.Statement, params: Params) -> list[rawsql.Record] | None:
        """The statement's rows, read now outside any transaction; None: take the usual path."""
        if not self._postgres:
            return self._fetch_sqlite(statement, params)
        if self._size == 0 or self._closed or self._paused():
            return None
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                return await self._fetch_postgres(statement, params)
        except TimeoutError:
            log.info("fast read took over %s s, taking the usual path", READ_TIMEOUT_SECONDS)
            return None

    async def shared(self, key: Hashable, read: Callable[[], Awaitable[T | None]]) -> T | None:
        """`read()`'s answer, from a read sent after this call, shared by the callers of `key` meanwhile.

        PostgreSQL: callers asking for the same `key` (and so the same read) while one is out
        wait for the next, sent as soon as that one is back, and all take its answer. Each is
        answered by a read sent after it asked, so the read sees every commit before its
        request arrived (read-your-writes); under load one round trip answers a worker's
        concurrent requests together, and the connections are not queued for one by one.
        Every caller of one key passes the same read: whichever caller's goes out answers all.
        SQLite reads in-process and at once: `read` runs for this caller alone. None: the read
        failed (or raised: logged), the caller takes the usual path.
        """
        if not self._postgres:
            return await _answer(read)
        loop = asyncio.get_running_loop()
        sharing = self._sharing
        if sharing is None or sharing.loop is not loop:  # a new event loop (tests): nothing of the old one carries over
            sharing = self._sharing = _SharedReads(loop)
        return await sharing.get(key, read)

    async def _fetch_postgres(self, statement: rawsql.Statement, params: Params) -> list[rawsql.Record] | None:
        pool = self._loop_pool()
        connection = await pool.acquire(self._connect, self._paused)
        if connection is None:
            return None
        healthy = False
        try:
            compiled = statement.compiled(self._dialect)
            cursor = connection.cursor()
            await cursor.execute(compiled.sql, compiled.arguments(params() if callable(params) else params))
            rows = [compiled.record(row) for row in await cursor.fetchall()] if compiled.row is not None else []
            healthy = True
            return rows
        except psycopg.Error as exc:
            log.info("fast read failed, taking the usual path: %s", exc)
            return None
        except Exception:
            # Not the database's doing (a bug): logged with its traceback, and the usual path answers.
            log.exception("fast read failed, taking the usual path")
            return None
        finally:
            # A read cut short (an error, a timeout, a cancelled request) may leave the connection
            # mid-query: it is closed, and its place freed for a new one.
            if not healthy:
                _close(connection)
            pool.release(connection if healthy else None)

    def _fetch_sqlite(self, statement: rawsql.Statement, params: Params) -> list[rawsql.Record] | None:
        try:
            pooled = self._engine.raw_connection()
        except self._dialect.loaded_dbapi.Error:
            return None
        try:
            return rawsql.run_on(pooled, self._dialect, statement, params() if callable(params) else params)
        except self._dialect.loaded_dbapi.Error as exc:
            log.info("fast read failed, taking the usual path: %s", exc)
            return None
        finally:
            pooled.close()

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    async def _connect(self) -> Connection | None:
        try:
            return await psycopg.AsyncConnection.connect(**self._connect_kwargs)
        except psycopg.Error as exc:
            self._paused_until = time.monotonic() + RECONNECT_PAUSE_SECONDS
            log.info("fast reads paused, a connection failed: %s", exc)
            return None

    def _loop_pool(self) -> "_LoopPool":
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop:
            if pool is not None:
                pool.close()  # opened on an event loop that is gone (tests start one per app)
            pool = self._pool = _LoopPool(loop, self._size)
        return pool

    def close(self) -> None:
        """Close the idle connections and answer no more reads (shutdown); one in use is closed when its read ends."""
        self._closed = True
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class _SharedReads:
    """One event loop's reads under way for `FastReads.shared`, by key: the next read's answer, the task sending it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._next: dict[Hashable, asyncio.Future[Any]] = {}  # answers of reads not yet sent
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}

    async def get(self, key: Hashable, read: Callable[[], Awaitable[T | None]]) -> T | None:
        answer = self._next.get(key)
        if answer is None:
            answer = self._next[key] = self.loop.create_future()
            if key not in self._tasks:
                # In a context of its own: the read serves many requests, not the first one's alone.
                self._tasks[key] = self.loop.create_task(self._reads(key, read), context=contextvars.Context())
        # Shielded: one caller cancelled (a client gone) must not cancel the others' answer.
        return cast(T | None, await asyncio.shield(answer))

    async def _reads(self, key: Hashable, read: Callable[[], Awaitable[Any]]) -> None:
        answer: asyncio.Future[Any] | None = None
        try:
            while (answer := self._next.pop(key, None)) is not None:  # who asks from now on waits for the next
                answer.set_result(await _answer(read))
        finally:
            # Cancelled (shutdown): whoever still waits takes the usual path, and the next caller starts afresh.
            for waiting in (answer, self._next.pop(key, None)):
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)
            del self._tasks[key]


async def _answer(read: Callable[[], Awaitable[T | None]]) -> T | None:
    """`read()`'s answer; None (logged with its traceback) when it raised: not the database's doing, a bug."""
    try:
        return await read()
    except Exception:
        log.exception("a fast read failed; its requests take the usual path")
        return None


class _GiveUp(Exception):
    """Told to a waiting read: no connection is coming (a connect failed, or the pool closed)."""


class _LoopPool:
    """At most `size` connections of one event loop; a read waits for one rather than opening more."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self._size = size
        self._opened = 0
        self._idle: list[Connection] = []
        # Reads waiting for a connection; each future gets one, or None meaning "open your own".
        self._waiting: deque[asyncio.Future[Connection | None]] = deque()
        self._closed = False

    async def acquire(
        self, connect: Callable[[], Awaitable[Connection | None]], paused: Callable[[], bool]
    ) -> Connection | None:
        """An idle connection, a new one while fewer than `size` are open, else the next one released.

        None when none can be had: a connect failed or connecting is paused (then every read
        waiting gives up too, rather than wait out a failing connect in turn), or the pool closed.
        """
        if self._closed:
            return None
        if self._idle:
            return self._idle.pop()
        if self._opened >= self._size:
            waiter: asyncio.Future[Connection | None] = self.loop.create_future()
            self._waiting.append(waiter)
            try:
                handed = await waiter
            except _GiveUp:
                return None
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self.release(waiter.result())  # handed over just as we were cancelled
                raise
            if handed is not None:
                return handed
            # A connection was discarded: its place is this read's to open, unless connecting is paused.
            if paused():
                self.release(None)
                return None
        else:
            self._opened += 1
        try:
            connection = await connect()
        except BaseException:
            self.release(None)
            raise
        if connection is None:
            # A failed connect pauses connecting: the reads waiting give up in turn, none connects.
            self.release(None)
        return connection

    def release(self, connection: Connection | None) -> None:
        """Give a connection back, or None for one discarded (closed here) or never opened."""
        if connection is not None and (self._closed or connection.closed):
            _close(connection)
            connection = None
        if self._closed:
            self._opened -= 1
            self._give_up_waiting()
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is None:
            self._opened -= 1
        else:
            self._idle.append(connection)

    def _give_up_waiting(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(_GiveUp())

    def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            _close(connection)
        self._opened -= len(self._idle)
        self._idle.clear()
        self._give_up_waiting()


def _close(connection: Connection) -> None:
    # Synchronous: shutdown and a discarded connection do not wait on the network, and the
    # connection's event loop may be gone. libpq's finish closes the socket at once.
    connection.pgconn.finish()
