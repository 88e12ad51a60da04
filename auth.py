"""Bearer-token authentication: user tokens stored hashed in the database, and the admin token."""

import hashlib
import secrets
import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config import Settings
from db import SessionDep, read_transaction, write_transaction
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


# Built once: every authenticated request runs it.
_USER_FOR_TOKEN = select(User).join(ApiToken, ApiToken.user_id == User.id).where(ApiToken.token_hash == bindparam("h"))


def _user_for_token(session: Session, token: str) -> User | None:
    return session.scalar(_USER_FOR_TOKEN, {"h": hash_token(token)})


def get_optional_user(session: SessionDep, credentials: BearerDep) -> User | None:
    """The token's user, None without a token; an invalid token is still a 401."""
    if credentials is None:
        return None
    with read_transaction(session):
        user = _user_for_token(session, credentials.credentials)
    if user is None:
        raise Unauthenticated("INVALID_TOKEN", "The bearer token is not valid.")
    return user


async def get_current_user(user: Annotated[User | None, Depends(get_optional_user)]) -> User:
    """The token's user; 401 without one (async: no I/O, so no thread hand-off)."""
    if user is None:
        raise Unauthenticated("MISSING_TOKEN", "This endpoint needs an Authorization: Bearer <token> header.")
    return user


def require_admin(request: Request, session: SessionDep, credentials: BearerDep) -> None:
    """Admit only the admin token: 401 without a valid token, 403 for a user token."""
    if credentials is None:
        raise Unauthenticated("MISSING_TOKEN", "This endpoint needs the admin bearer token.")
    if secrets.compare_digest(credentials.credentials.encode(), request.app.state.admin_token.encode()):
        return
    with read_transaction(session):
        user = _user_for_token(session, credentials.credentials)
    if user is not None:
        raise Forbidden("ADMIN_REQUIRED", "This endpoint needs the admin token, not a user token.")
    raise Unauthenticated("INVALID_TOKEN", "The bearer token is not valid.")


def ensure_acting_user(user: User, user_id: uuid.UUID | None) -> None:
    """A `user_id` sent by a client must name the token's user."""
    if user_id is not None and user_id != user.id:
        raise Forbidden("USER_MISMATCH", "user_id does not match the bearer token's user.")


CurrentUser = Annotated[User, Depends(get_current_user)]
OptionalUser = Annotated[User | None, Depends(get_optional_user)]
AdminDep = Depends(require_admin)
