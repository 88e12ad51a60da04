"""/health: does the database answer?"""

from fastapi import APIRouter, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import read_transaction
from errors import Code, database_unavailable, problems
from routers import json_response
from schemas import Health
from state import DatabaseDep

router = APIRouter(tags=["health"])


def _ping(session: Session) -> None:
    with read_transaction(session):
        session.execute(text("SELECT 1"))


# The ping turns any database failure into DATABASE_UNAVAILABLE, a busy pool included.
@router.get(
    "/health",
    response_model=Health,
    operation_id="getHealth",
    responses=problems(Code.DATABASE_UNAVAILABLE, database=False),
)
async def health(db: DatabaseDep) -> Response:
    """200 with the backend and connection-pool state when the database answers, 503 otherwise."""
    try:
        await db.run(_ping)
    except SQLAlchemyError as exc:
        raise database_unavailable(db.backend) from exc
    return json_response(Health(status="ok", database=db.backend, details=db.pool_state()))
