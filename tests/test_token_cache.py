"""The per-process token cache: a known token skips the database, an unknown one never sticks."""

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from auth import TokenCache, create_user
from config import Settings
from db import Database, prepare_schema
from schemas import UserCreate


def _database() -> Database:
    db = Database(Settings(seed_demo_data=False))
    prepare_schema(db)
    return db


def _count_selects(db: Database) -> list[str]:
    seen: list[str] = []

    @event.listens_for(db.engine, "before_cursor_execute")
    def _record(_conn, _cursor, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    return seen


def test_a_known_token_is_read_from_the_database_once() -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        user, token = create_user(session, UserCreate(name="A", handle="a"))
    selects = _count_selects(db)
    cache = TokenCache()
    with Session(db.engine, expire_on_commit=False) as session:
        assert cache.user_id(session, token) == user.id
        assert cache.user_id(session, token) == user.id
    assert len(selects) == 1
    db.dispose()


def test_an_unknown_token_is_asked_every_time_and_not_kept() -> None:
    db = _database()
    selects = _count_selects(db)
    cache = TokenCache()
    with Session(db.engine, expire_on_commit=False) as session:
        assert cache.user_id(session, "not-a-token") is None
        assert cache.user_id(session, "not-a-token") is None
    assert len(selects) == 2
    assert cache._users == {}
    db.dispose()


def test_a_full_cache_drops_its_oldest_entry_and_still_answers() -> None:
    db = _database()
    with Session(db.engine, expire_on_commit=False) as session:
        tokens = [create_user(session, UserCreate(name=h, handle=h)) for h in ("u1", "u2", "u3")]
    cache = TokenCache(max_entries=2)
    with Session(db.engine, expire_on_commit=False) as session:
        for user, token in tokens:
            assert cache.user_id(session, token) == user.id
        assert len(cache._users) == 2
        first_user, first_token = tokens[0]
        assert cache.user_id(session, first_token) == first_user.id  # read again from the database
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
