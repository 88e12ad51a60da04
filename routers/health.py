"""/health: does the database answer, and (deep) does it take writes?"""

from fastapi import APIRouter, Query, Response
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from db import probe_write, read_transaction
from errors import Code, ServiceUnavailable, database_problem, database_unavailable
from openapi import problems
from routers import json_response
from schemas import Health
from state import DatabaseDep

router = APIRouter(tags=["health"])


def _ping(session: Session) -> None:
    with read_transaction(session):
        session.execute(text("SELECT 1"))


@router.get(
    "/health",
    response_model=Health,
    operation_id="getHealth",
    # The ping (and the deep write) reports a database that does not answer, is busy, or cannot write.
    responses=problems(
        Code.DATABASE_UNAVAILABLE,
        Code.DATABASE_BUSY,
        Code.DATABASE_FULL,
        Code.DATABASE_READ_ONLY,
        Code.VALIDATION_ERROR,
        database=False,
    ),
)
async def health(
    db: DatabaseDep,
    deep: bool = Query(False, description="Also run a write (changing nothing, rolled back): can the database write?"),
) -> Response:
    """200 with the backend and pool state when the database answers (and, deep, takes a write); 503 otherwise."""
    try:
        await db.run(probe_write if deep else _ping)
    except SQLAlchemyError as exc:
        problem = database_problem(exc, health=True) if isinstance(exc, DBAPIError | PoolTimeout) else None
        if not isinstance(problem, ServiceUnavailable):
            problem = database_unavailable()
        problem.extra["database"] = db.backend
        raise problem from exc
    return json_response(Health(status="ok", database=db.backend, details=db.pool_state()))
