"""/health: does the database answer?"""

from fastapi import APIRouter, Request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from errors import ServiceUnavailable, problem_schema
from schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses=problem_schema(503))
def health(request: Request) -> Health:
    """200 with the backend and connection-pool state when the database answers, 503 otherwise."""
    db = request.app.state.db
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("DATABASE_UNAVAILABLE", "The database does not answer.", database=db.backend) from exc
    return Health(status="ok", database=db.backend, details=db.pool_state())
