"""The per-process token cache: a known token skips the database for at most a second, an unknown one never sticks."""

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from auth import TokenCache, create_user, revoke_presented_token
from config import Settings
from db import Database, prepare_schema
from models import ApiToken
from schemas import UserCreate
from tests.factories import count_runs
from tokens import CACHE_SECONDS, hash_token


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _database() -> Database:
    db = Database(Settings(seed_demo_data=False))
    prepare_schema(db)
    return db


def _count_statements(db: Database, verb: str = "SELECT") -> list[str]:
    """Every statement SQLite runs from now on that starts with `verb`, whoever sends it (the ORM or rawsql)."""
    seen: list[str] = []

    def _record(statement: str) -> None:
        if statement.lstrip().upper().startswith(verb):
            seen.append(statement)

    @event.listens_for(db.engine, "checkout")
    def _trace(dbapi_connection: sqlite3.Connection, *_args: object) -> None:
        dbapi_connection.set_trace_callback(_record)

    return seen


def test_a_known_token_is_read_from_the_database_once_within_a_second() -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="A", handle="a"))
    selects = _count_statements(db)
    clock = FakeClock()
    cache = TokenCache(clock=clock)
    with Session(db.engine, expire_on_commit=False) as session:
        assert cache.user_id(session, token) == user.id
        clock.now += CACHE_SECONDS - 0.001
        assert cache.user_id(session, token) == user.id
        assert cache.cached(token) == user.id
    assert len(selects) == 1
    db.dispose()


def test_an_entry_a_second_old_is_checked_in_the_database_again() -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="A", handle="a"))
    selects = _count_statements(db)
    clock = FakeClock()
    cache = TokenCache(clock=clock)
    with Session(db.engine, expire_on_commit=False) as session:
        assert cache.user_id(session, token) == user.id
        clock.now += CACHE_SECONDS
        assert cache.cached(token) is None  # the caller must ask the database again
        assert cache.user_id(session, token) == user.id
    assert len(selects) == 2
    db.dispose()


def test_a_token_revoked_elsewhere_is_refused_once_its_entry_is_a_second_old() -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="A", handle="a"))
    clock = FakeClock()
    cache = TokenCache(clock=clock)  # this process's cache; the revocation happens "on another worker"
    with Session(db.engine, expire_on_commit=False) as session:
        assert cache.user_id(session, token) == user.id
        revoke_presented_token(session, user.id, hash_token(token))
        clock.now += CACHE_SECONDS
        assert cache.cached(token) is None
        assert cache.user_id(session, token) is None
    assert cache._entries == {}  # refused tokens are not kept
    db.dispose()


def test_the_entry_age_counts_from_before_the_database_read() -> None:
    # A read that started before a revocation committed must not earn a full second after it.
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        _, token = create_user(session, UserCreate(name="A", handle="a"))
    clock = FakeClock()
    cache = TokenCache(clock=clock)

    @event.listens_for(db.engine, "before_cursor_execute")
    def _slow_read(*_args: object) -> None:
        clock.now += 0.4  # every statement "takes" 0.4 s

    with Session(db.engine, expire_on_commit=False) as session:
        cache.user_id(session, token)
    (entry,) = cache._entries.values()
    assert entry.checked_at == 1000.0
    db.dispose()


def test_an_expired_token_is_refused_from_the_cache_at_its_expiry() -> None:
    db = _database()
    with freeze_time("2030-01-01T12:00:00Z") as frozen:
        with Session(db.engine, expire_on_commit=False) as session:
            user, token = create_user(session, UserCreate(name="A", handle="a"), ttl=timedelta(days=1))
        cache = TokenCache(clock=FakeClock())  # never ages: only expiry can refuse it
        with Session(db.engine, expire_on_commit=False) as session:
            assert cache.user_id(session, token) == user.id
        frozen.tick(timedelta(days=1) - timedelta(seconds=1))
        assert cache.cached(token) == user.id
        frozen.tick(timedelta(seconds=1))
        assert cache.cached(token) is None
        with Session(db.engine, expire_on_commit=False) as session:
            assert cache.user_id(session, token) is None
    db.dispose()


def test_last_used_is_written_at_most_once_a_minute() -> None:
    db = _database()
    with freeze_time("2030-01-01T12:00:00Z") as frozen:
        with Session(db.engine, expire_on_commit=False) as session:
            _, token = create_user(session, UserCreate(name="A", handle="a"))
        updates = _count_statements(db, "UPDATE")
        clock = FakeClock()
        cache = TokenCache(clock=clock)

        def last_used() -> datetime | None:
            with Session(db.engine) as session:
                return session.scalar(select(ApiToken.last_used_at))

        with Session(db.engine, expire_on_commit=False) as session:
            cache.user_id(session, token)
            first = last_used()
            for _ in range(59):  # a cache miss every second for a minute: no further write
                frozen.tick(1)
                clock.now += CACHE_SECONDS
                cache.user_id(session, token)
            assert last_used() == first and len(updates) == 1
            frozen.tick(1)
            clock.now += CACHE_SECONDS
            cache.user_id(session, token)
        assert len(updates) == 2 and last_used() == first + timedelta(minutes=1)
    db.dispose()


def test_a_token_is_admitted_while_another_process_holds_the_sqlite_write_lock(tmp_path) -> None:
    # Recording the use needs the write lock; a read-only request must not fail for want of it.
    db = Database(Settings(database_url=f"sqlite:///{tmp_path}/locked.db", sqlite_busy_timeout_seconds=0.1))
    prepare_schema(db)
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="A", handle="a"))
    blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with Session(db.engine, expire_on_commit=False) as session:
            assert TokenCache().user_id(session, token) == user.id
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with Session(db.engine, expire_on_commit=False) as session:
        assert session.scalar(select(ApiToken.last_used_at)) is None  # recorded at a later check instead
        assert TokenCache().user_id(session, token) == user.id
        assert session.scalar(select(ApiToken.last_used_at)) is not None
    db.dispose()


def test_an_unknown_token_is_asked_every_time_and_not_kept() -> None:
    db = _database()
    selects = _count_statements(db)
    cache = TokenCache()
    with Session(db.engine, expire_on_commit=False) as session:
        assert cache.user_id(session, "not-a-token") is None
        assert cache.user_id(session, "not-a-token") is None
    assert len(selects) == 2
    assert cache._entries == {}
    db.dispose()


def test_a_full_cache_drops_its_oldest_entry_and_still_answers() -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        tokens = [create_user(session, UserCreate(name=h, handle=h)) for h in ("u1", "u2", "u3")]
    cache = TokenCache(max_entries=2)
    with Session(db.engine, expire_on_commit=False) as session:
        for user, token in tokens:
            assert cache.user_id(session, token) == user.id
        assert len(cache._entries) == 2
        first_user, first_token = tokens[0]
        assert cache.user_id(session, first_token) == first_user.id  # read again from the database
        assert len(cache._entries) == 2
    db.dispose()


def test_cached_answers_only_for_tokens_already_seen_valid() -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="C", handle="c"))
    cache = TokenCache()
    assert cache.cached(token) is None  # not yet looked up: the caller must ask the database
    with Session(db.engine, expire_on_commit=False) as session:
        cache.user_id(session, token)
        cache.user_id(session, "not-a-token")
    assert cache.cached(token) == user.id
    assert cache.cached("not-a-token") is None
    db.dispose()


def test_a_cache_of_no_entries_raises_value_error() -> None:
    with pytest.raises(ValueError):
        TokenCache(max_entries=0)


def test_a_token_is_checked_by_a_fast_read_and_its_use_recorded_once_a_minute_by_a_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`check`: the read is a fast read; only when last_used_at is due does the check take a database call."""
    db = _database()
    with freeze_time("2030-01-01T12:00:00Z") as frozen:
        with Session(db.engine, expire_on_commit=False) as session:
            user, token = create_user(session, UserCreate(name="A", handle="a"))
        runs = count_runs(db, monkeypatch)
        selects = _count_statements(db)
        clock = FakeClock()
        cache = TokenCache(clock=clock)
        assert asyncio.run(cache.check(db, token)) == user.id  # never used: recorded, in a call
        assert len(runs) == 1
        for _ in range(3):
            frozen.tick(1)
            clock.now += CACHE_SECONDS
            assert asyncio.run(cache.check(db, token)) == user.id
        assert len(runs) == 1 and len(selects) == 2 + 3  # the call's read and its fast read; three fast reads
        frozen.tick(60)
        clock.now += CACHE_SECONDS
        assert asyncio.run(cache.check(db, token)) == user.id
        assert len(runs) == 2
    db.dispose()


def test_a_fast_read_refuses_revoked_and_unknown_tokens_without_keeping_them(monkeypatch: pytest.MonkeyPatch) -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="A", handle="a"))
    clock = FakeClock()
    cache = TokenCache(clock=clock)
    assert asyncio.run(cache.check(db, token)) == user.id
    with Session(db.engine, expire_on_commit=False) as session:
        revoke_presented_token(session, user.id, hash_token(token))
    runs = count_runs(db, monkeypatch)
    clock.now += CACHE_SECONDS
    assert asyncio.run(cache.check(db, token)) is None
    assert asyncio.run(cache.check(db, "not-a-token")) is None
    assert (runs, cache._entries) == ([], {})
    db.dispose()


def test_a_token_check_the_fast_read_cannot_answer_takes_a_database_call(monkeypatch: pytest.MonkeyPatch) -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="A", handle="a"))
    cache = TokenCache()
    assert asyncio.run(cache.check(db, token)) == user.id  # records the use

    async def cannot(*_args: object) -> None:
        return None

    monkeypatch.setattr(db.reads, "fetch", cannot)
    runs = count_runs(db, monkeypatch)
    assert asyncio.run(TokenCache().check(db, token)) == user.id
    assert len(runs) == 1
    db.dispose()


def test_a_fast_token_entry_ages_from_before_its_read(monkeypatch: pytest.MonkeyPatch) -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        _, token = create_user(session, UserCreate(name="A", handle="a"))
    asyncio.run(TokenCache().check(db, token))  # records the use: the next check is a fast read alone
    clock = FakeClock()
    cache = TokenCache(clock=clock)
    fetch = db.reads.fetch

    async def slow(*args: Any) -> Any:
        clock.now += 0.4
        return await fetch(*args)

    monkeypatch.setattr(db.reads, "fetch", slow)
    asyncio.run(cache.check(db, token))
    (entry,) = cache._entries.values()
    assert entry.checked_at == 1000.0
    db.dispose()


@pytest.mark.parametrize("ended", ["revoked", "expired"])
def test_a_revoked_or_expired_token_is_refused_without_recording_its_use(
    ended: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its last_used_at is a minute old and more, yet a refused token is never recorded as used, nor costs a call."""
    db = _database()
    with freeze_time("2030-01-01T12:00:00Z") as frozen:
        with Session(db.engine, expire_on_commit=False) as session:
            user, token = create_user(session, UserCreate(name="A", handle="a"), ttl=timedelta(days=1))
        clock = FakeClock()
        cache = TokenCache(clock=clock)
        assert asyncio.run(cache.check(db, token)) == user.id  # used at 12:00
        if ended == "revoked":
            with Session(db.engine, expire_on_commit=False) as session:
                revoke_presented_token(session, user.id, hash_token(token))
            frozen.tick(timedelta(hours=1))
        else:
            frozen.tick(timedelta(days=2))
        clock.now += CACHE_SECONDS
        runs = count_runs(db, monkeypatch)
        assert asyncio.run(cache.check(db, token)) is None
        with Session(db.engine, expire_on_commit=False) as session:
            assert cache.user_id(session, token) is None
            last_used = session.scalar(select(ApiToken.last_used_at))
        assert runs == []
        assert last_used == datetime(2030, 1, 1, 12, tzinfo=UTC)
    db.dispose()
