"""Bearer-token authentication: user tokens stored hashed in the database, and the admin token."""

import hashlib
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config import Settings
from db import Database, read_transaction, write_transaction
from errors import Conflict, Forbidden, NotFound, Unauthenticated
from models import ApiToken, ServiceSecret, User
from schemas import UserCreate

ADMIN_SECRET = "admin_token"
T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False, description="A user token, or the admin token for admin routes")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def hash_token(token: str) -> str:
    """The form a token is stored and looked up in."""
    return hashlib.sha256(token.encode()).hexdigest()


def _add_token(session: Session, user_id: uuid.UUID) -> str:
    token = secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user_id, token_hash=hash_token(token)))
    return token


def issue_token(session: Session, user_id: uuid.UUID) -> str:
    """Store a new bearer token for an existing user; the plain token is returned only here."""
    with write_transaction(session):
        if session.get(User, user_id) is None:
            raise NotFound("USER_NOT_FOUND", "No user has this id.")
        return _add_token(session, user_id)


def create_user(session: Session, data: UserCreate) -> tuple[User, str]:
    """Register a user with a first token; 409 when the handle is taken (case-insensitively)."""
    user = User(name=data.name, handle=data.handle, email=data.email)
    try:
        with write_transaction(session):
            session.add(user)
            session.flush()
            token = _add_token(session, user.id)
    except IntegrityError as exc:
        raise Conflict("HANDLE_TAKEN", "This handle is already taken.") from exc
    return user, token


def resolve_admin_token(session: Session, settings: Settings, *, shared: bool) -> str:
    """ADMIN_TOKEN if set; else one generated token, kept in a shared database for every worker."""
    if settings.admin_token:
        return settings.admin_token
    generated = secrets.token_urlsafe(24)
    if not shared:
        return generated
    try:
        with write_transaction(session):
            if session.scalar(select(ServiceSecret.id).where(ServiceSecret.name == ADMIN_SECRET)) is None:
                session.add(ServiceSecret(name=ADMIN_SECRET, value=generated))
    except IntegrityError:
        pass  # another worker stored its token first; use that one
    with read_transaction(session):
        token = session.scalar(select(ServiceSecret.value).where(ServiceSecret.name == ADMIN_SECRET))
    assert token is not None
    return token


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
        self._users: dict[str, uuid.UUID] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()  # PostgreSQL work runs in several threads

    def user_id(self, session: Session, token: str) -> uuid.UUID | None:
        """The token's user id, from this cache or else from the database."""
        token_hash = hash_token(token)
        user_id = self._users.get(token_hash)
        if user_id is None:
            with read_transaction(session):
                user_id = session.scalar(_USER_ID_FOR_TOKEN, {"h": token_hash})
            if user_id is not None:
                with self._lock:
                    if len(self._users) >= self._max_entries:
                        del self._users[next(iter(self._users))]
                    self._users[token_hash] = user_id
        return user_id


@dataclass(frozen=True)
class Caller:
    """Who is calling: the bearer token, checked inside the request's one unit of database work.

    A route hands its database work to `as_user`, `as_viewer` or `as_admin`; the token is
    resolved in the same call as the work, so a request costs one trip to the database layer.
    """

    db: Database
    token: str | None
    admin_token: str
    tokens: TokenCache

    def _user_id(self, session: Session) -> uuid.UUID:
        assert self.token is not None
        user_id = self.tokens.user_id(session, self.token)
        if user_id is None:
            raise Unauthenticated("INVALID_TOKEN", "The bearer token is not valid.")
        return user_id

    async def as_user(self, work: Callable[[Session, uuid.UUID], T]) -> T:
        """Run `work(session, user_id)` for the token's user; 401 without a valid user token."""
        if self.token is None:
            raise Unauthenticated("MISSING_TOKEN", "This endpoint needs an Authorization: Bearer <token> header.")
        return await self.db.run(lambda session: work(session, self._user_id(session)))

    async def as_viewer(self, work: Callable[[Session, uuid.UUID | None], T]) -> T:
        """Run `work(session, user_id)`, user_id None without a token; an invalid token is still a 401."""
        if self.token is None:
            return await self.db.run(lambda session: work(session, None))
        return await self.db.run(lambda session: work(session, self._user_id(session)))

    async def as_admin(self, work: Callable[[Session], T]) -> T:
        """Run `work(session)` for the admin token only: 401 without a valid token, 403 for a user token."""
        if self.token is None:
            raise Unauthenticated("MISSING_TOKEN", "This endpoint needs the admin bearer token.")
        if not secrets.compare_digest(self.token.encode(), self.admin_token.encode()):
            token = self.token
            if await self.db.run(lambda session: self.tokens.user_id(session, token)) is not None:
                raise Forbidden("ADMIN_REQUIRED", "This endpoint needs the admin token, not a user token.")
            raise Unauthenticated("INVALID_TOKEN", "The bearer token is not valid.")
        return await self.db.run(work)


async def get_caller(request: Request, credentials: BearerDep) -> Caller:  # async: no I/O
    """The caller's bearer token (not yet checked) and the database to check it in."""
    token = credentials.credentials if credentials is not None else None
    state = request.app.state
    return Caller(state.db, token, state.admin_token, state.tokens)


def ensure_acting_user(user_id: uuid.UUID, claimed: uuid.UUID | None) -> None:
    """A `user_id` sent by a client must name the token's user."""
    if claimed is not None and claimed != user_id:
        raise Forbidden("USER_MISMATCH", "user_id does not match the bearer token's user.")


CallerDep = Annotated[Caller, Depends(get_caller)]
