"""/users: sign-up, the caller's profile, and admin-issued tokens."""

import uuid

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from auth import AdminDep, CurrentUserId, create_user, get_user, issue_token
from errors import WRITE_CODES, Code, problems
from routers import json_response
from schemas import TokenRead, UserCreate, UserRead, UserWithToken
from state import DatabaseDep

router = APIRouter(prefix="/users", tags=["users"])


@router.post(
    "",
    status_code=201,
    response_model=UserWithToken,
    operation_id="registerUser",
    responses=problems(Code.HANDLE_TAKEN, Code.VALIDATION_ERROR, Code.MALFORMED_JSON, *WRITE_CODES),
)
async def register(data: UserCreate, db: DatabaseDep) -> Response:
    """Create a user and return it with its first bearer token (shown only here)."""

    def work(session: Session) -> UserWithToken:
        user, token = create_user(session, data)
        return UserWithToken(**UserRead.model_validate(user).model_dump(), token=token)

    return json_response(await db.run(work), 201)


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
        *WRITE_CODES,
    ),
)
async def new_token(_: AdminDep, user_id: uuid.UUID, db: DatabaseDep) -> Response:
    """Admin: issue another token for a user, so a front-end's back-end can act for them."""
    token = await db.run(lambda session: issue_token(session, user_id))
    return json_response(TokenRead(user_id=user_id, token=token), 201)
