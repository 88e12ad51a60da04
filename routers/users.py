"""/users: sign-up, the caller's profile, and admin-issued tokens."""

import uuid

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from auth import AdminDep, CurrentUserId, create_user, get_user, issue_token
from errors import problem_schema
from idempotency import ADMIN, ANONYMOUS, IdempotencyDep, respond
from ratelimit import SignupRateLimit
from routers import json_response
from schemas import TokenRead, UserCreate, UserRead, UserWithToken
from state import DatabaseDep, SettingsDep

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=201, response_model=UserWithToken, responses=problem_schema(409, 422))
async def register(
    data: UserCreate, db: DatabaseDep, settings: SettingsDep, _: SignupRateLimit, idem: IdempotencyDep
) -> Response:
    """Create a user and return it with its first bearer token (shown only here)."""

    def work(session: Session) -> UserWithToken:
        user, token = create_user(session, data)
        return UserWithToken(**UserRead.model_validate(user).model_dump(), token=token)

    return await respond(db, settings, idem, ANONYMOUS, work, 201)


@router.get("/me", response_model=UserRead, responses=problem_schema(401))
async def me(user_id: CurrentUserId, db: DatabaseDep) -> Response:
    """The user the bearer token belongs to."""
    return json_response(await db.run(lambda session: UserRead.model_validate(get_user(session, user_id))))


@router.post(
    "/{user_id}/token",
    status_code=201,
    response_model=TokenRead,
    responses=problem_schema(401, 403, 404, 422),
)
async def new_token(
    _: AdminDep, user_id: uuid.UUID, db: DatabaseDep, settings: SettingsDep, idem: IdempotencyDep
) -> Response:
    """Admin: issue another token for a user, so a front-end's back-end can act for them."""

    def work(session: Session) -> TokenRead:
        return TokenRead(user_id=user_id, token=issue_token(session, user_id))

    return await respond(db, settings, idem, ADMIN, work, 201)
