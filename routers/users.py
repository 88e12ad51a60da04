"""/users: sign-up, the caller's profile and tokens (list, revoke, log out), and admin-issued tokens."""

import uuid

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from auth import (
    AdminDep,
    CurrentTokenHash,
    CurrentUserId,
    TokenCacheDep,
    create_user,
    get_user,
    issue_token,
    list_tokens,
    revoke_presented_token,
    revoke_token,
)
from errors import Code
from idempotency import ADMIN, ANONYMOUS, IdempotencyDep, respond
from openapi import IDEMPOTENT_CODES, WRITE_CODES, problems
from ratelimit import SignupRateLimit
from routers import json_response
from schemas import ApiTokenRead, TokenRead, UserCreate, UserRead, UserWithToken
from state import DatabaseDep, SettingsDep

router = APIRouter(prefix="/users", tags=["users"])


@router.post(
    "",
    status_code=201,
    response_model=UserWithToken,
    operation_id="registerUser",
    responses=problems(
        Code.HANDLE_TAKEN,
        Code.VALIDATION_ERROR,
        Code.MALFORMED_JSON,
        Code.RATE_LIMITED,
        *IDEMPOTENT_CODES,
        *WRITE_CODES,
    ),
)
async def register(
    data: UserCreate, db: DatabaseDep, settings: SettingsDep, _: SignupRateLimit, idem: IdempotencyDep
) -> Response:
    """Create a user and return it with its first bearer token (shown only here)."""

    def work(session: Session) -> UserWithToken:
        user, token = create_user(session, data, ttl=settings.token_ttl)
        return UserWithToken(**UserRead.model_validate(user).model_dump(), token=token)

    return await respond(db, settings, idem, ANONYMOUS, work, 201)


@router.get(
    "/me",
    response_model=UserRead,
    operation_id="getCurrentUser",
    responses=problems(Code.MISSING_TOKEN, Code.INVALID_TOKEN),
)
async def me(user_id: CurrentUserId, db: DatabaseDep) -> Response:
    """The user the bearer token belongs to."""
    return json_response(await db.run(lambda session: UserRead.model_validate(get_user(session, user_id))))


@router.post(
    "/{user_id}/token",
    status_code=201,
    response_model=TokenRead,
    operation_id="issueUserToken",
    responses=problems(
        Code.MISSING_TOKEN,
        Code.INVALID_TOKEN,
        Code.ADMIN_REQUIRED,
        Code.USER_NOT_FOUND,
        Code.VALIDATION_ERROR,
        *IDEMPOTENT_CODES,
        *WRITE_CODES,
    ),
)
async def new_token(
    _: AdminDep, user_id: uuid.UUID, db: DatabaseDep, settings: SettingsDep, idem: IdempotencyDep
) -> Response:
    """Admin: issue another token for a user, so a front-end's back-end can act for them."""

    def work(session: Session) -> TokenRead:
        return TokenRead(user_id=user_id, token=issue_token(session, user_id, ttl=settings.token_ttl))

    return await respond(db, settings, idem, ADMIN, work, 201)


@router.get(
    "/me/tokens",
    operation_id="listMyTokens",
    response_model=list[ApiTokenRead],
    responses=problems(Code.MISSING_TOKEN, Code.INVALID_TOKEN),
)
async def my_tokens(user_id: CurrentUserId, token_hash: CurrentTokenHash, db: DatabaseDep) -> Response:
    """The caller's working tokens (never their values), newest first; `current` marks this request's."""

    def work(session: Session) -> list[ApiTokenRead]:
        return [
            ApiTokenRead(
                id=token.id,
                created_date=token.created_date,
                last_used_at=token.last_used_at,
                expires_at=token.expires_at,
                current=token.token_hash == token_hash,
            )
            for token in list_tokens(session, user_id)
        ]

    return json_response(await db.run(work))


@router.delete(
    "/me/tokens/{token_id}",
    operation_id="revokeMyToken",
    status_code=204,
    responses=problems(
        Code.MISSING_TOKEN, Code.INVALID_TOKEN, Code.TOKEN_NOT_FOUND, Code.VALIDATION_ERROR, *WRITE_CODES
    ),
)
async def revoke_my_token(
    user_id: CurrentUserId, token_id: uuid.UUID, db: DatabaseDep, cache: TokenCacheDep
) -> Response:
    """Revoke one of the caller's tokens: refused at once here, within a second on every other worker and host."""
    cache.forget(await db.run(lambda session: revoke_token(session, user_id, token_id)))
    return Response(status_code=204)


@router.post(
    "/me/logout",
    operation_id="logout",
    status_code=204,
    responses=problems(Code.MISSING_TOKEN, Code.INVALID_TOKEN, *WRITE_CODES),
)
async def logout(
    user_id: CurrentUserId, token_hash: CurrentTokenHash, db: DatabaseDep, cache: TokenCacheDep
) -> Response:
    """Revoke the token this request came with; the caller's other tokens keep working."""
    await db.run(lambda session: revoke_presented_token(session, user_id, token_hash))
    cache.forget(token_hash)
    return Response(status_code=204)
