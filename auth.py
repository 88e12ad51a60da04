"""Bearer-token authentication: user tokens stored hashed in the database, and the admin token."""

import hashlib
import secrets
import threading
import uuid
from collections import OrderedDict
from typing import Annotated

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


async def _token_user_id(request: Request, token: str) -> uuid.UUID | None:
    # From the cache when this process has seen the token; else one database call. Either way
    # before FastAPI validates the request, so 401/403 come before 422, as for any dependency.
    tokens: TokenCache = request.app.state.tokens
    user_id = tokens.cached(token)
    if user_id is None:
        db: Database = request.app.state.db
        user_id = await db.run(lambda session: tokens.user_id(session, token))
    return user_id


async def get_viewer_id(request: Request, credentials: BearerDep) -> uuid.UUID | None:
    """The token's user id, None without a token; an invalid token is still a 401."""
    if credentials is None:
        return None
    user_id = await _token_user_id(request, credentials.credentials)
    if user_id is None:
        raise Unauthenticated("INVALID_TOKEN", "The bearer token is not valid.")
    return user_id


async def get_current_user_id(user_id: Annotated[uuid.UUID | None, Depends(get_viewer_id)]) -> uuid.UUID:
    """The token's user id; 401 without a token."""
    if user_id is None:
        raise Unauthenticated("MISSING_TOKEN", "This endpoint needs an Authorization: Bearer <token> header.")
    return user_id


async def require_admin(request: Request, credentials: BearerDep) -> None:
    """Admit only the admin token: 401 without a valid token, 403 for a user token."""
    if credentials is None:
        raise Unauthenticated("MISSING_TOKEN", "This endpoint needs the admin bearer token.")
    if secrets.compare_digest(credentials.credentials.encode(), request.app.state.admin_token.encode()):
        return
    if await _token_user_id(request, credentials.credentials) is not None:
        raise Forbidden("ADMIN_REQUIRED", "This endpoint needs the admin token, not a user token.")
    raise Unauthenticated("INVALID_TOKEN", "The bearer token is not valid.")


def ensure_acting_user(user_id: uuid.UUID, claimed: uuid.UUID | None) -> None:
    """A `user_id` sent by a client must name the token's user."""
    if claimed is not None and claimed != user_id:
        raise Forbidden("USER_MISMATCH", "user_id does not match the bearer token's user.")


# Async dependencies: no thread hand-off, and no database work at all for a token this process knows.
CurrentUserId = Annotated[uuid.UUID, Depends(get_current_user_id)]
ViewerId = Annotated[uuid.UUID | None, Depends(get_viewer_id)]
AdminDep = Depends(require_admin)
