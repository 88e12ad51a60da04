"""Which user a bearer token belongs to: tokens are stored hashed, and each process caches the hits."""

import hashlib
import threading
import uuid
from collections import OrderedDict

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from db import read_transaction
from models import ApiToken


def hash_token(token: str) -> str:
    """The form a token is stored and looked up in."""
    return hashlib.sha256(token.encode()).hexdigest()


# Built once: every authenticated request runs it (one indexed read of one table).
_USER_ID_FOR_TOKEN = select(ApiToken.user_id).where(ApiToken.token_hash == bindparam("h"))


class TokenCache:
    """Valid tokens this process has already looked up, by hash: most requests skip the database.

    Exact because a token, once issued, never changes owner and is never revoked or expired
    (there is no endpoint for either, and users are never deleted). Whoever adds revocation
    must drop or invalidate this cache. Only hits are kept, so random invalid tokens cannot
    fill it; the oldest entry goes when it is full.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._users: OrderedDict[str, uuid.UUID] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()  # PostgreSQL work runs in several threads

    def cached(self, token: str) -> uuid.UUID | None:
        """The token's user id if this process has seen the token valid; no database work."""
        return self._users.get(hash_token(token))

    def user_id(self, session: Session, token: str) -> uuid.UUID | None:
        """The token's user id, from this cache or else from the database."""
        token_hash = hash_token(token)
        user_id = self._users.get(token_hash)
        if user_id is None:
            with read_transaction(session):
                user_id = session.scalar(_USER_ID_FOR_TOKEN, {"h": token_hash})
            if user_id is not None:
                with self._lock:
                    if token_hash not in self._users and len(self._users) >= self._max_entries:
                        self._users.popitem(last=False)
                    self._users[token_hash] = user_id
        return user_id
