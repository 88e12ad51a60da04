"""/users: sign-up, the caller's profile, and admin-issued tokens."""

import uuid

from fastapi import APIRouter
from sqlalchemy.orm import Session

from auth import CallerDep, create_user, issue_token
from db import DatabaseDep, read_transaction
from errors import problem_schema
from models import User
from schemas import TokenRead, UserCreate, UserRead, UserWithToken

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=201, response_model=UserWithToken, responses=problem_schema(409, 422))
async def register(data: UserCreate, db: DatabaseDep) -> UserWithToken:
    """Create a user and return it with its first bearer token (shown only here)."""
    user, token = await db.run(lambda session: create_user(session, data))
    return UserWithToken(**UserRead.model_validate(user).model_dump(), token=token)


@router.get("/me", response_model=UserRead, responses=problem_schema(401))
async def me(caller: CallerDep) -> UserRead:
    """The user the bearer token belongs to."""

    def work(session: Session, user_id: uuid.UUID) -> UserRead:
        with read_transaction(session):
            return UserRead.model_validate(session.get_one(User, user_id))

    return await caller.as_user(work)


@router.post(
    "/{user_id}/token", status_code=201, response_model=TokenRead, responses=problem_schema(401, 403, 404, 422)
)
async def new_token(user_id: uuid.UUID, caller: CallerDep) -> TokenRead:
    """Admin: issue another token for a user, so a front-end's back-end can act for them."""
    return TokenRead(user_id=user_id, token=await caller.as_admin(lambda session: issue_token(session, user_id)))
