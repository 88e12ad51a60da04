"""/users: sign-up, the caller's profile, and admin-issued tokens."""

import uuid

from fastapi import APIRouter
from sqlalchemy.orm import Session

from auth import AdminDep, CurrentUserId, create_user, issue_token
from db import DatabaseDep, read_transaction
from errors import Unauthenticated, problem_schema
from models import User
from schemas import TokenRead, UserCreate, UserRead, UserWithToken

router = APIRouter(prefix="/users", tags=["users"])


@router.post("", status_code=201, response_model=UserWithToken, responses=problem_schema(409, 422))
async def register(data: UserCreate, db: DatabaseDep) -> UserWithToken:
    """Create a user and return it with its first bearer token (shown only here)."""

    def work(session: Session) -> UserWithToken:
        user, token = create_user(session, data)
        return UserWithToken(**UserRead.model_validate(user).model_dump(), token=token)

    return await db.run(work)


@router.get("/me", response_model=UserRead, responses=problem_schema(401))
async def me(user_id: CurrentUserId, db: DatabaseDep) -> UserRead:
    """The user the bearer token belongs to."""

    def work(session: Session) -> UserRead:
        with read_transaction(session):
            user = session.get(User, user_id)
            if user is None:  # users are never deleted; were one to be, its token stops here
                raise Unauthenticated("INVALID_TOKEN", "The bearer token is not valid.")
            return UserRead.model_validate(user)

    return await db.run(work)


@router.post(
    "/{user_id}/token",
    status_code=201,
    response_model=TokenRead,
    dependencies=[AdminDep],
    responses=problem_schema(401, 403, 404, 422),
)
async def new_token(user_id: uuid.UUID, db: DatabaseDep) -> TokenRead:
    """Admin: issue another token for a user, so a front-end's back-end can act for them."""
    return TokenRead(user_id=user_id, token=await db.run(lambda session: issue_token(session, user_id)))
