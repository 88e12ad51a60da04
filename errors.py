"""Domain errors that carry an HTTP status and a stable code, and the one problem+json renderer."""

from collections.abc import Mapping
from enum import Enum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_jsonable_python
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas import (
    ConflictProblem,
    ForbiddenProblem,
    HoldGoneProblem,
    HoldStatus,
    NotFoundProblem,
    Problem,
    ServiceUnavailableProblem,
    SlotOverlapProblem,
    SlotUnavailableProblem,
    UnauthorizedProblem,
    ValidationProblem,
)

PROBLEM_JSON = "application/problem+json"
CONFIRM_GONE_DETAIL = "Hold not found or expired."


class Code(Enum):
    """Every error code the API sends, with its status and the schema of its body.

    The one source: domain code raises these, each route lists the ones it can return
    (`problems(...)`), and the OpenAPI document is generated from those lists. A member's name is
    its wire `code`, except where one code is sent with two statuses (HOLD_CANCELLED).
    """

    status: int
    code: str
    schema: type[Problem]

    def __init__(self, status: int, code: str, schema: type[Problem]) -> None:
        self.status = status
        self.code = code
        self.schema = schema

    # 401, always with `WWW-Authenticate: Bearer`
    MISSING_TOKEN = 401, "MISSING_TOKEN", UnauthorizedProblem
    INVALID_TOKEN = 401, "INVALID_TOKEN", UnauthorizedProblem
    # 403
    ADMIN_REQUIRED = 403, "ADMIN_REQUIRED", ForbiddenProblem
    USER_MISMATCH = 403, "USER_MISMATCH", ForbiddenProblem
    NOT_HOLD_OWNER = 403, "NOT_HOLD_OWNER", ForbiddenProblem
    # 404
    USER_NOT_FOUND = 404, "USER_NOT_FOUND", NotFoundProblem
    ROOM_NOT_FOUND = 404, "ROOM_NOT_FOUND", NotFoundProblem
    SLOT_NOT_FOUND = 404, "SLOT_NOT_FOUND", NotFoundProblem
    HOLD_NOT_FOUND = 404, "HOLD_NOT_FOUND", NotFoundProblem
    # 409
    HANDLE_TAKEN = 409, "HANDLE_TAKEN", ConflictProblem
    ROOM_NAME_TAKEN = 409, "ROOM_NAME_TAKEN", ConflictProblem
    SLOT_OVERLAP = 409, "SLOT_OVERLAP", SlotOverlapProblem
    SLOT_IN_USE = 409, "SLOT_IN_USE", ConflictProblem
    SLOT_UNAVAILABLE = 409, "SLOT_UNAVAILABLE", SlotUnavailableProblem
    SLOT_STARTED = 409, "SLOT_STARTED", ConflictProblem
    HOLD_CONFIRMED = 409, "HOLD_CONFIRMED", ConflictProblem
    HOLD_CANCELLED = 409, "HOLD_CANCELLED", ConflictProblem  # a cancelled booking cannot be released or extended
    HOLD_NOT_CONFIRMED = 409, "HOLD_NOT_CONFIRMED", ConflictProblem
    EXTENSION_LIMIT_REACHED = 409, "EXTENSION_LIMIT_REACHED", ConflictProblem
    TRANSACTION_CONFLICT = 409, "TRANSACTION_CONFLICT", ConflictProblem  # with `Retry-After: 0`
    CONSTRAINT_VIOLATION = 409, "CONSTRAINT_VIOLATION", ConflictProblem
    # 410
    HOLD_EXPIRED = 410, "HOLD_EXPIRED", HoldGoneProblem
    HOLD_RELEASED = 410, "HOLD_RELEASED", HoldGoneProblem
    HOLD_CANCELLED_GONE = 410, "HOLD_CANCELLED", HoldGoneProblem  # confirming a cancelled booking
    # 422
    VALIDATION_ERROR = 422, "VALIDATION_ERROR", ValidationProblem
    MALFORMED_JSON = 422, "MALFORMED_JSON", ValidationProblem
    INVALID_CURSOR = 422, "INVALID_CURSOR", ValidationProblem
    SLOT_IN_PAST = 422, "SLOT_IN_PAST", ValidationProblem
    RANGE_TOO_LARGE = 422, "RANGE_TOO_LARGE", ValidationProblem
    # 503; DATABASE_BUSY with `Retry-After: 1`
    DATABASE_BUSY = 503, "DATABASE_BUSY", ServiceUnavailableProblem
    DATABASE_UNAVAILABLE = 503, "DATABASE_UNAVAILABLE", ServiceUnavailableProblem
    # Not raised by a route: an unknown path or method, and the last-resort 500.
    NOT_FOUND = 404, "NOT_FOUND", NotFoundProblem
    METHOD_NOT_ALLOWED = 405, "METHOD_NOT_ALLOWED", Problem
    INTERNAL_ERROR = 500, "INTERNAL_ERROR", Problem


# The 410 code for a hold that can no longer be confirmed, extended or released, by its status now.
HOLD_GONE_CODES = {
    HoldStatus.EXPIRED: Code.HOLD_EXPIRED,
    HoldStatus.RELEASED: Code.HOLD_RELEASED,
    HoldStatus.CANCELLED: Code.HOLD_CANCELLED_GONE,
}
# The 409 code for a booking that an action on a live hold does not apply to.
BOOKING_CONFLICT_CODES = {HoldStatus.CONFIRMED: Code.HOLD_CONFIRMED, HoldStatus.CANCELLED: Code.HOLD_CANCELLED}


class DomainError(Exception):
    """A failure the API reports to its caller; subclasses fix status and title."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, code: Code, detail: str, *, headers: Mapping[str, str] | None = None, **extra: object):
        if code.status != self.status:
            raise TypeError(f"{code.name} is a {code.status}, not a {self.status} ({type(self).__name__})")
        super().__init__(detail)
        self.problem = code
        self.code = code.code
        self.detail = detail
        self.headers = headers
        self.extra = extra


class InvalidInput(DomainError):
    """The request is well-formed but breaks a rule (422)."""

    status = 422
    title = "Unprocessable content"


class Unauthenticated(DomainError):
    """No valid bearer token (401)."""

    status = 401
    title = "Unauthorized"

    def __init__(self, code: Code, detail: str, **extra: object):
        super().__init__(code, detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(DomainError):
    """Authenticated, but not allowed to do this (403)."""

    status = 403
    title = "Forbidden"


class NotHoldOwner(Forbidden):
    """The hold belongs to another user (403)."""

    def __init__(self) -> None:
        super().__init__(Code.NOT_HOLD_OWNER, "This hold belongs to another user.")


class NotFound(DomainError):
    """The named resource does not exist (404)."""

    status = 404
    title = "Not found"


class Conflict(DomainError):
    """The request clashes with the current state (409)."""

    status = 409
    title = "Conflict"


class SlotUnavailable(Conflict):
    """The slot already has a live claim (409)."""


class HoldGone(DomainError):
    """The hold has expired, or was released or cancelled (410)."""

    status = 410
    title = "Gone"


class ServiceUnavailable(DomainError):
    """A dependency (the database) does not answer (503)."""

    status = 503
    title = "Service unavailable"


def database_busy(detail: str) -> ServiceUnavailable:
    """The database is there but cannot take this request now: retry in a second."""
    return ServiceUnavailable(Code.DATABASE_BUSY, detail, headers={"Retry-After": "1"})


def database_unavailable(backend: str | None = None) -> ServiceUnavailable:
    """The database does not answer at all; /health also names the backend it tried."""
    detail = "The database does not answer."
    if backend is None:
        return ServiceUnavailable(Code.DATABASE_UNAVAILABLE, detail)
    return ServiceUnavailable(Code.DATABASE_UNAVAILABLE, detail, database=backend)


def problem_response(
    status: int, title: str, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: object
) -> JSONResponse:
    """Render one RFC 9457 problem document."""
    body = {
        "type": f"urn:booking:problem:{code.lower().replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    return JSONResponse(to_jsonable_python(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return problem_response(exc.status, exc.title, exc.code, exc.detail, exc.headers, **exc.extra)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    malformed = any(err["type"] == "json_invalid" for err in errors)
    return problem_response(
        422,
        "Unprocessable content",
        (Code.MALFORMED_JSON if malformed else Code.VALIDATION_ERROR).code,
        "The request body is not valid JSON." if malformed else "The request does not match the schema.",
        errors=errors,
    )


# Starlette's own errors: an unknown path or method. (No dependency raises HTTPException.)
_HTTP_CODES = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI raises a bare 400 only when it cannot decode a request body (e.g. not UTF-8).
        return problem_response(
            422, "Unprocessable content", Code.MALFORMED_JSON.code, "The request body is not valid JSON."
        )
    known = _HTTP_CODES.get(exc.status_code)
    code = known.code if known else f"HTTP_{exc.status_code}"
    return problem_response(exc.status_code, str(exc.detail), code, str(exc.detail), exc.headers)


# SQLSTATEs PostgreSQL uses for "this transaction lost a race; run it again".
_RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# lock_not_available, query_canceled (statement_timeout); 53xxx resources; 57P0x shutdown.
_BUSY_SQLSTATES = {"55P03", "57014"}


def _database_problem(exc: DBAPIError | PoolTimeout) -> DomainError | None:
    """The problem a database failure is reported as; None when it is not one we recognise."""
    if isinstance(exc, PoolTimeout):
        return database_busy("No database connection was free in time; retry shortly.")
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(exc, IntegrityError):
        return Conflict(Code.CONSTRAINT_VIOLATION, "The change conflicts with stored data.")
    if sqlstate in _RETRYABLE_SQLSTATES:
        return Conflict(
            Code.TRANSACTION_CONFLICT, "A concurrent change won; retry the request.", headers={"Retry-After": "0"}
        )
    if sqlstate is not None and (sqlstate in _BUSY_SQLSTATES or sqlstate.startswith(("53", "57P"))):
        return database_busy("The database is overloaded or restarting; retry shortly.")
    if "database is locked" in str(exc.orig):
        return database_busy("The database is busy; retry shortly.")
    if exc.connection_invalidated or sqlstate is None or sqlstate.startswith("08"):
        return database_unavailable()
    return None


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # Domain code already turns the expected races into domain errors; this is the backstop
    # that keeps any other lost race or overload a 409/503 rather than a 500.
    assert isinstance(exc, DBAPIError | PoolTimeout)
    problem = _database_problem(exc)
    if problem is None:
        return await _unexpected_error(request, exc)
    return await _domain_error(request, problem)


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    # Still a 500, but in the same shape as every other error, so clients parse one format.
    return problem_response(500, "Internal server error", Code.INTERNAL_ERROR.code, "An unexpected error occurred.")


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as application/problem+json."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)


_DESCRIPTIONS = {
    401: "Missing or invalid bearer token",
    403: "Not allowed (not the owner, not admin, or user_id mismatch)",
    404: "Not found",
    409: "Conflicts with the current state",
    410: "Hold expired, released or cancelled",
    422: "Invalid input",
    503: "The database is busy or does not answer",
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying: 1 with DATABASE_BUSY, 0 with TRANSACTION_CONFLICT",
    "schema": {"type": "integer", "minimum": 0},
}
# Response headers by status, and the codes that send them.
_HEADERS: dict[int, dict[str, tuple[frozenset[Code], dict[str, Any]]]] = {
    401: {
        "WWW-Authenticate": (
            frozenset({Code.MISSING_TOKEN, Code.INVALID_TOKEN}),
            {"description": "The scheme to authenticate with", "required": True, "schema": {"const": "Bearer"}},
        )
    },
    409: {"Retry-After": (frozenset({Code.TRANSACTION_CONFLICT}), _RETRY_AFTER)},
    503: {"Retry-After": (frozenset({Code.DATABASE_BUSY}), _RETRY_AFTER)},
}

# Every route's work is one database call (or several): any of them can meet a busy or absent database.
DATABASE_CODES = (Code.DATABASE_BUSY, Code.DATABASE_UNAVAILABLE)
# A write can also lose a PostgreSQL race (deadlock, serialization) or hit a constraint the
# domain code did not foresee; errors._database_problem reports those as 409s.
WRITE_CODES = (Code.TRANSACTION_CONFLICT, Code.CONSTRAINT_VIOLATION)


def problem_ref(schema: type[Problem]) -> str:
    """Where a problem schema lives in the OpenAPI document."""
    return f"#/components/schemas/{schema.__name__}"


def _narrowed(schema: type[Problem], codes: list[Code]) -> dict[str, Any]:
    # The status's schema, with `code` narrowed to what this operation can send: generated
    # clients get one enum per operation and status to switch on.
    return {
        "title": schema.__name__,
        "allOf": [
            {"$ref": problem_ref(schema)},
            {
                "type": "object",
                "required": ["code"],
                "properties": {"code": {"type": "string", "enum": [code.code for code in codes]}},
            },
        ],
    }


def problems(*codes: Code, database: bool = True) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: each status it can answer with, its problem schema and the codes it sends.

    `database` adds the 503s every route that reaches the database can answer.
    """
    wanted = dict.fromkeys((*codes, *DATABASE_CODES) if database else codes)  # ordered, no repeats
    by_status: dict[int, list[Code]] = {}
    for code in wanted:
        by_status.setdefault(code.status, []).append(code)
    responses: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(by_status.items()):
        shapes = list(dict.fromkeys(code.schema for code in group))
        variants = [_narrowed(shape, [code for code in group if code.schema is shape]) for shape in shapes]
        response: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": variants[0] if len(variants) == 1 else {"oneOf": variants}}},
        }
        headers = {name: header for name, (senders, header) in _HEADERS.get(status, {}).items() if senders & set(group)}
        if headers:
            response["headers"] = headers
        responses[status] = response
    return responses
