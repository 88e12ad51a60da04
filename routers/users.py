"""/users: sign-up, the caller's profile, and admin-issued tokens."""

import uuid

from fastapi import APIRouter

from auth import AdminDep, CurrentUser, create_user, issue_token
from db import SessionDep
from errors import problem_schema
from schemas import TokenRead, UserCreate, UserRead, UserWithToken

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=201, response_model=UserWithToken, responses=problem_schema(409, 422))
def register(data: UserCreate, session: SessionDep) -> UserWithToken:
    """Create a user and return it with its first bearer token (shown only here)."""
    user, token = create_user(session, data)
    return UserWithToken(**UserRead.model_validate(user).model_dump(), token=token)


@router.get("/me", response_model=UserRead, responses=problem_schema(401))
def me(user: CurrentUser) -> UserRead:
    """The user the bearer token belongs to."""
    return UserRead.model_validate(user)


@router.post(
    "/{user_id}/token",
    status_code=201,
    response_model=TokenRead,
    dependencies=[AdminDep],
    responses=problem_schema(401, 403, 404, 422),
)
def new_token(user_id: uuid.UUID, session: SessionDep) -> TokenRead:
    """Admin: issue another token for a user, so a front-end's back-end can act for them."""
    return TokenRead(user_id=user_id, token=issue_token(session, user_id))
