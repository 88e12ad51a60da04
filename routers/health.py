"""/health: does the database answer?"""

from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db import DatabaseDep, read_transaction
from errors import ServiceUnavailable, problem_schema
from schemas import Health

router = APIRouter(tags=["health"])


def _ping(session: Session) -> None:
    with read_transaction(session):
        session.execute(text("SELECT 1"))


@router.get("/health", response_model=Health, responses=problem_schema(503))
async def health(db: DatabaseDep) -> Health:
    """200 with the backend and connection-pool state when the database answers, 503 otherwise."""
    try:
        await db.run(_ping)
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("DATABASE_UNAVAILABLE", "The database does not answer.", database=db.backend) from exc
    return Health(status="ok", database=db.backend, details=db.pool_state())
