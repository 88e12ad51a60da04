"""Bearer-token authentication: user tokens stored hashed in the database, and the admin token."""

import secrets
import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config import Settings
from db import read_transaction, write_transaction
from errors import Code, Conflict, Forbidden, NotFound, Unauthenticated
from models import ApiToken, ServiceSecret, User
from schemas import UserCreate
from state import AppState, app_state
from tokens import TokenCache as TokenCache  # re-exported: bench and tests reach it as auth.TokenCache
from tokens import hash_token

ADMIN_SECRET = "admin_token"

_bearer = HTTPBearer(auto_error=False, description="A user token, or the admin token for admin routes")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _add_token(session: Session, user_id: uuid.UUID) -> str:
    token = secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user_id, token_hash=hash_token(token)))
    return token


def issue_token(session: Session, user_id: uuid.UUID) -> str:
    """Store a new bearer token for an existing user; the plain token is returned only here."""
    with write_transaction(session):
        if session.get(User, user_id) is None:
            raise NotFound(Code.USER_NOT_FOUND, "No user has this id.")
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
        raise Conflict(Code.HANDLE_TAKEN, "This handle is already taken.") from exc
    return user, token


def get_user(session: Session, user_id: uuid.UUID) -> User:
    """The token's user (the caller's profile); a token whose user is gone is a 401."""
    with read_transaction(session):
        user = session.get(User, user_id)
    if user is None:  # users are never deleted; were one to be, its token stops here
        raise Unauthenticated(Code.INVALID_TOKEN, "The bearer token is not valid.")
    return user


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


async def _token_user_id(state: AppState, token: str) -> uuid.UUID | None:
    # From the cache when this process has seen the token; else one database call. Either way
    # before FastAPI validates the request, so 401/403 come before 422, as for any dependency.
    user_id = state.tokens.cached(token)
    if user_id is None:
        user_id = await state.db.run(lambda session: state.tokens.user_id(session, token))
    return user_id


async def get_viewer_id(request: Request, credentials: BearerDep) -> uuid.UUID | None:
    """The token's user id, None without a token; an invalid token is still a 401."""
    if credentials is None:
        return None
    user_id = await _token_user_id(app_state(request), credentials.credentials)
    if user_id is None:
        raise Unauthenticated(Code.INVALID_TOKEN, "The bearer token is not valid.")
    return user_id


async def get_current_user_id(user_id: Annotated[uuid.UUID | None, Depends(get_viewer_id)]) -> uuid.UUID:
    """The token's user id; 401 without a token."""
    if user_id is None:
        raise Unauthenticated(Code.MISSING_TOKEN, "This endpoint needs an Authorization: Bearer <token> header.")
    return user_id


async def require_admin(request: Request, credentials: BearerDep) -> None:
    """Admit only the admin token: 401 without a valid token, 403 for a user token."""
    if credentials is None:
        raise Unauthenticated(Code.MISSING_TOKEN, "This endpoint needs the admin bearer token.")
    state = app_state(request)
    if secrets.compare_digest(credentials.credentials.encode(), state.admin_token.encode()):
        return
    if await _token_user_id(state, credentials.credentials) is not None:
        raise Forbidden(Code.ADMIN_REQUIRED, "This endpoint needs the admin token, not a user token.")
    raise Unauthenticated(Code.INVALID_TOKEN, "The bearer token is not valid.")


def ensure_acting_user(user_id: uuid.UUID, claimed: uuid.UUID | None) -> None:
    """A `user_id` sent by a client must name the token's user."""
    if claimed is not None and claimed != user_id:
        raise Forbidden(Code.USER_MISMATCH, "user_id does not match the bearer token's user.")


# Async dependencies: no thread hand-off, and no database work at all for a token this process knows.
CurrentUserId = Annotated[uuid.UUID, Depends(get_current_user_id)]
ViewerId = Annotated[uuid.UUID | None, Depends(get_viewer_id)]
AdminDep = Annotated[None, Depends(require_admin)]
