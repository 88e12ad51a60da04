"""Bearer-token authentication: user tokens stored hashed in the database, their lifecycle, and the admin token."""

import secrets
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config import Settings, get_settings
from db import Database, prepare_schema, read_transaction, write_transaction
from errors import Code, Conflict, Forbidden, NotFound, Unauthenticated
from models import ApiToken, ServiceSecret, User
from schemas import UserCreate
from state import AppState, app_state
from tokens import TokenCache as TokenCache  # re-exported: bench and tests reach it as auth.TokenCache
from tokens import hash_token

# The generated admin token's SHA-256 (never the token itself), shared by every worker and host.
ADMIN_SECRET = "admin_token_sha256"
ROTATE_COMMAND = "python -m auth rotate-admin-token"


def bearer_token(request: Request) -> str | None:
    """The request's `Authorization: Bearer <token>` token; None without one (or with another scheme).

    Read here, not by a `fastapi.security.HTTPBearer` sub-dependency: each dependency costs a
    resolution per request, and the document's security comes from openapi.py, not from it.
    """
    authorization = request.headers.get("authorization")
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if not (scheme and token) or scheme.lower() != "bearer":
        return None
    return token


def _add_token(session: Session, user_id: uuid.UUID, now: datetime, ttl: timedelta | None) -> str:
    token = secrets.token_urlsafe(32)
    expires_at = None if ttl is None else now + ttl
    session.add(ApiToken(user_id=user_id, token_hash=hash_token(token), expires_at=expires_at))
    return token


def issue_token(session: Session, user_id: uuid.UUID, *, ttl: timedelta | None = None) -> str:
    """Store a new bearer token for a user, expiring after `ttl` if given; the plain token is returned only here."""
    with write_transaction(session) as now:
        if session.get(User, user_id) is None:
            raise NotFound(Code.USER_NOT_FOUND, "No user has this id.")
        return _add_token(session, user_id, now, ttl)


def create_user(session: Session, data: UserCreate, *, ttl: timedelta | None = None) -> tuple[User, str]:
    """Register a user with a first token; 409 when the handle is taken (case-insensitively)."""
    user = User(name=data.name, handle=data.handle, email=data.email)
    try:
        with write_transaction(session) as now:
            session.add(user)
            session.flush()
            token = _add_token(session, user.id, now, ttl)
    except IntegrityError as exc:
        raise Conflict(Code.HANDLE_TAKEN, "This handle is already taken.") from exc
    return user, token


def list_tokens(session: Session, user_id: uuid.UUID) -> list[ApiToken]:
    """The user's tokens that still work (neither revoked nor expired), newest first."""
    with read_transaction(session) as now:
        return list(
            session.scalars(
                select(ApiToken)
                .where(
                    ApiToken.user_id == user_id,
                    ApiToken.revoked_at.is_(None),
                    or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
                )
                .order_by(ApiToken.created_date.desc(), ApiToken.id)
            )
        )


def revoke_token(session: Session, user_id: uuid.UUID, token_id: uuid.UUID) -> str:
    """Revoke one of the user's tokens (again: no change); return its hash. 404 if the user has no such token."""
    with write_transaction(session) as now:
        token_hash = session.scalar(
            select(ApiToken.token_hash).where(ApiToken.id == token_id, ApiToken.user_id == user_id)
        )
        if token_hash is None:  # another user's token id is as unknown as a made-up one
            raise NotFound(Code.TOKEN_NOT_FOUND, "You have no token with this id.")
        session.execute(
            update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None)).values(revoked_at=now)
        )
    return token_hash


def revoke_presented_token(session: Session, user_id: uuid.UUID, token_hash: str) -> None:
    """Revoke the token the request came with (log out); already revoked meanwhile: no change."""
    with write_transaction(session) as now:
        session.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == token_hash, ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )


def get_user(session: Session, user_id: uuid.UUID) -> User:
    """The token's user (the caller's profile); a token whose user is gone is a 401."""
    with read_transaction(session):
        user = session.get(User, user_id)
    if user is None:  # users are never deleted; were one to be, its token stops here
        raise Unauthenticated(Code.INVALID_TOKEN, "The bearer token is not valid.")
    return user


@dataclass(frozen=True)
class AdminToken:
    """The admin token as a process holds it: only its hash, and what start-up may print about it."""

    token_hash: str
    shown: str  # never a value that came from the environment


def _store_admin_hash(session: Session, token_hash: str, *, replace: bool) -> str:
    """Store the generated admin token's hash unless one is stored (or replace it); return the stored hash."""
    try:
        with write_transaction(session):
            row = session.scalar(select(ServiceSecret).where(ServiceSecret.name == ADMIN_SECRET))
            if row is None:
                session.add(ServiceSecret(name=ADMIN_SECRET, value=token_hash))
            elif replace:
                row.value = token_hash
    except IntegrityError:
        pass  # another worker stored its token first; use that one
    with read_transaction(session):
        stored = session.scalar(select(ServiceSecret.value).where(ServiceSecret.name == ADMIN_SECRET))
    assert stored is not None
    return stored


def resolve_admin_token(session: Session, settings: Settings, *, shared: bool) -> AdminToken:
    """ADMIN_TOKEN if set; else one generated token, its hash kept in a shared database for every worker.

    A generated token is shown only by the process that generated it: the database holds only
    its hash, so other workers and later starts cannot show it.
    """
    if settings.admin_token:
        return AdminToken(hash_token(settings.admin_token), "from ADMIN_TOKEN")
    generated = secrets.token_urlsafe(24)
    generated_hash = hash_token(generated)
    if not shared:
        return AdminToken(generated_hash, generated)
    stored = _store_admin_hash(session, generated_hash, replace=False)
    if secrets.compare_digest(stored, generated_hash):
        return AdminToken(stored, f"{generated} (generated now, stored hashed: shown only this once)")
    return AdminToken(
        stored,
        "already generated by another worker or an earlier start, stored hashed, not shown again"
        f" (set ADMIN_TOKEN, or run `{ROTATE_COMMAND}` and restart)",
    )


def rotate_admin_token(session: Session) -> str:
    """Replace the generated admin token of a shared database; return the new one (workers pick it up on restart)."""
    token = secrets.token_urlsafe(24)
    _store_admin_hash(session, hash_token(token), replace=True)
    return token


async def _token_user_id(state: AppState, token: str) -> uuid.UUID | None:
    # From the cache when this process has seen the token; else one fast read or database call.
    # Either way before FastAPI validates the request, so 401/403 come before 422, as for any dependency.
    user_id = state.tokens.cached(token)
    if user_id is None:
        user_id = await state.tokens.check(state.db, token)
    return user_id


async def get_viewer_id(request: Request) -> uuid.UUID | None:
    """The token's user id, None without a token; an invalid token is still a 401."""
    token = bearer_token(request)
    if token is None:
        return None
    user_id = await _token_user_id(app_state(request), token)
    if user_id is None:
        raise Unauthenticated(Code.INVALID_TOKEN, "The bearer token is not valid.")
    return user_id


async def get_current_user_id(request: Request) -> uuid.UUID:
    """The token's user id; 401 without a token."""
    # Called, not declared as a sub-dependency: one dependency resolved per request, not two.
    user_id = await get_viewer_id(request)
    if user_id is None:
        raise Unauthenticated(Code.MISSING_TOKEN, "This endpoint needs an Authorization: Bearer <token> header.")
    return user_id


async def require_admin(request: Request) -> None:
    """Admit only the admin token: 401 without a valid token, 403 for a user token."""
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated(Code.MISSING_TOKEN, "This endpoint needs the admin bearer token.")
    state = app_state(request)
    # Hashes of equal length compared in constant time: no timing hint about the admin token.
    if secrets.compare_digest(hash_token(token).encode(), state.admin_token_hash.encode()):
        return
    if await _token_user_id(state, token) is not None:
        raise Forbidden(Code.ADMIN_REQUIRED, "This endpoint needs the admin token, not a user token.")
    raise Unauthenticated(Code.INVALID_TOKEN, "The bearer token is not valid.")


async def get_current_token_hash(request: Request, _: Annotated[uuid.UUID, Depends(get_current_user_id)]) -> str:
    """The hash of the valid user token the request came with (to revoke it)."""
    token = bearer_token(request)
    assert token is not None  # get_current_user_id has admitted it
    return hash_token(token)


async def _token_cache(request: Request) -> TokenCache:
    return app_state(request).tokens


def ensure_acting_user(user_id: uuid.UUID, claimed: uuid.UUID | None) -> None:
    """A `user_id` sent by a client must name the token's user."""
    if claimed is not None and claimed != user_id:
        raise Forbidden(Code.USER_MISMATCH, "user_id does not match the bearer token's user.")


# Async dependencies: no thread hand-off, and no database work at all for a token this process knows.
CurrentUserId = Annotated[uuid.UUID, Depends(get_current_user_id)]
ViewerId = Annotated[uuid.UUID | None, Depends(get_viewer_id)]
AdminDep = Annotated[None, Depends(require_admin)]
CurrentTokenHash = Annotated[str, Depends(get_current_token_hash)]
TokenCacheDep = Annotated[TokenCache, Depends(_token_cache)]


def main(argv: list[str]) -> int:
    """`python -m auth rotate-admin-token`: a new generated admin token for DATABASE_URL, printed once."""
    if argv != ["rotate-admin-token"]:
        print(f"usage: {ROTATE_COMMAND}", file=sys.stderr)
        return 2
    settings = get_settings()
    if settings.admin_token:
        print("ADMIN_TOKEN is set: the admin token is that value; change it there.", file=sys.stderr)
        return 1
    db = Database(settings)
    try:
        if db.in_memory:
            print("DATABASE_URL is in memory: each start generates and prints its own admin token.", file=sys.stderr)
            return 1
        prepare_schema(db)
        with Session(db.engine, expire_on_commit=False) as session:
            token = rotate_admin_token(session)
    finally:
        db.dispose()
    print(f"new admin token (stored hashed, shown only now; restart the service to use it): {token}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
