"""Which user a bearer token belongs to: tokens are stored hashed, and each process caches the hits for a second."""

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

import rawsql
from clock import utc_now
from db import Database, read_transaction, write_transaction
from models import ApiToken

# How long a process trusts a token it has checked in the database without asking again: the
# bound on how late a revocation made by another worker or host takes effect here.
CACHE_SECONDS = 1.0
# `last_used_at` is rewritten at most this often per token: one write a minute, not one a request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(token: str) -> str:
    """The form a token is stored and looked up in."""
    return hashlib.sha256(token.encode()).hexdigest()


# Built once: every cache miss runs them (one indexed read of one table; a write once a minute).
# The read below the ORM (rawsql): a miss comes once a second per active token, so under load
# it is a fair share of all requests.
_TOKEN_ROW = rawsql.Statement(
    select(ApiToken.id, ApiToken.user_id, ApiToken.expires_at, ApiToken.revoked_at, ApiToken.last_used_at).where(
        ApiToken.token_hash == bindparam("h")
    )
)
_TOUCH = (
    update(ApiToken)
    .where(
        ApiToken.id == bindparam("token_id"),
        or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= bindparam("stale_before")),
    )
    # Being used is not a change to the token: last_updated_date keeps its value.
    .values(last_used_at=bindparam("now"), last_updated_date=ApiToken.last_updated_date)
    .execution_options(synchronize_session=False)
)


def _monotonic() -> float:
    # Looked up at each call, not bound at import, so a frozen test clock (freezegun) governs it too.
    return time.monotonic()


def _valid(row: rawsql.Record, now: datetime) -> bool:
    """Whether the token's row admits it at `now`: not revoked, not expired."""
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > now)


def _use_due(row: rawsql.Record, now: datetime) -> bool:
    """Whether the token's use is to be recorded now (its last_used_at a minute old, or never set)."""
    last_used: datetime | None = row.last_used_at
    return last_used is None or last_used <= now - LAST_USED_RESOLUTION


def _touch(session: Session, token_id: uuid.UUID) -> None:
    """Record a token's use; best effort: bookkeeping never fails the request it rides on."""
    try:
        # Conditional, so workers racing at the minute's turn write it once.
        with write_transaction(session) as now:
            session.execute(_TOUCH, {"token_id": token_id, "now": now, "stale_before": now - LAST_USED_RESOLUTION})
    except DBAPIError:
        # The database refused the write (e.g. a SQLite file locked by another process past the busy
        # timeout): the token was read valid, so serve the request; a later check records the use.
        pass


class _Entry(NamedTuple):
    user_id: uuid.UUID
    checked_at: float  # this process's monotonic clock, read before the database was asked
    expires_at: datetime | None


class TokenCache:
    """Valid tokens this process has checked in the database within the last second, by hash.

    A hit skips the database; an entry older than CACHE_SECONDS is checked again. The entry's
    age is counted from before the read that admitted it, so a revocation committed anywhere
    (another worker, another host: only this process's own clock is read) is honoured here
    within CACHE_SECONDS of its commit. Expiry is judged on every hit, so it is exact. Only
    valid tokens are kept, so random invalid tokens cannot fill it; the oldest entry goes when
    it is full.
    """

    def __init__(self, max_entries: int = 100_000, *, clock: Callable[[], float] | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock or _monotonic
        self._lock = threading.Lock()  # PostgreSQL work runs in several threads

    def _fresh(self, token_hash: str) -> uuid.UUID | None:
        entry = self._entries.get(token_hash)
        if entry is None or self._clock() - entry.checked_at >= CACHE_SECONDS:
            return None
        if entry.expires_at is not None and entry.expires_at <= utc_now():
            return None
        return entry.user_id

    def cached(self, token: str) -> uuid.UUID | None:
        """The token's user id if this process checked it valid within the last second; no database work."""
        return self._fresh(hash_token(token))

    async def check(self, db: Database, token: str) -> uuid.UUID | None:
        """`user_id` for a token not cached: its read as a fast read (fastread.py), else in a database call.

        The call also when the token's use is due to be recorded (a write, once a minute).
        """
        token_hash = hash_token(token)
        checked_at = self._clock()  # before the read: an entry is never younger than what it saw
        rows = await db.reads.fetch(_TOKEN_ROW, {"h": token_hash})
        now = utc_now()
        if rows is None or (rows and _valid(rows[0], now) and _use_due(rows[0], now)):
            return await db.run(lambda session: self.user_id(session, token))
        return self._admit(token_hash, rows[0] if rows else None, now, checked_at)

    def user_id(self, session: Session, token: str) -> uuid.UUID | None:
        """The token's user id, from this cache or else from the database; None if unknown, revoked or expired."""
        token_hash = hash_token(token)
        user_id = self._fresh(token_hash)
        if user_id is not None:
            return user_id
        checked_at = self._clock()  # before the read: an entry is never younger than what it saw
        with read_transaction(session) as now:
            row = rawsql.first(session.connection(), _TOKEN_ROW, {"h": token_hash})
        if row is not None and _valid(row, now) and _use_due(row, now):
            _touch(session, row.id)
        return self._admit(token_hash, row, now, checked_at)

    def _admit(self, token_hash: str, row: rawsql.Record | None, now: datetime, checked_at: float) -> uuid.UUID | None:
        """Cache the token's row as read at `now` if it is valid, and give its user id; None (and forgotten) if not."""
        if row is None or not _valid(row, now):
            self.forget(token_hash)
            return None
        with self._lock:
            self._entries.pop(token_hash, None)
            if len(self._entries) >= self._max_entries:
                self._entries.popitem(last=False)
            self._entries[token_hash] = _Entry(row.user_id, checked_at, row.expires_at)
        owner: uuid.UUID = row.user_id
        return owner

    def forget(self, token_hash: str) -> None:
        """Drop a token from this process's cache (it was revoked here).

        Its next request reads the token again, and is refused. A check already under way here,
        whose read went out before the revocation committed, may still admit it once more; its
        entry's age counts from before that read, so within the cache's second all the same.
        """
        with self._lock:
            self._entries.pop(token_hash, None)
