"""Domain errors that carry an HTTP status and a stable code, and the one problem+json renderer."""

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic_core import to_json
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from requestid import HEADER as REQUEST_ID_HEADER
from requestid import current_request_id
from schemas import (
    BadRequestProblem,
    ConflictProblem,
    ForbiddenProblem,
    HoldCooldownProblem,
    HoldGoneProblem,
    HoldLimitProblem,
    HoldStatus,
    NotFoundProblem,
    PayloadTooLargeProblem,
    Problem,
    RateLimitedProblem,
    ServiceUnavailableProblem,
    SlotOverlapProblem,
    SlotUnavailableProblem,
    UnauthorizedProblem,
    ValidationProblem,
)

# Every 5xx is logged here with its cause; uvicorn configures no handler, so WARNING and above
# reach stderr through logging's last-resort handler unless the deployment configures one.
log = logging.getLogger("booking.errors")

PROBLEM_JSON = "application/problem+json"
# Where the domain error handler leaves the code of the problem it answered, in the request's scope.
PROBLEM_CODE = "booking.problem_code"
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

    # 400
    INVALID_IDEMPOTENCY_KEY = 400, "INVALID_IDEMPOTENCY_KEY", BadRequestProblem
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
    TOKEN_NOT_FOUND = 404, "TOKEN_NOT_FOUND", NotFoundProblem
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
    HOLD_LIMIT_REACHED = 409, "HOLD_LIMIT_REACHED", HoldLimitProblem
    HOLD_COOLDOWN = 409, "HOLD_COOLDOWN", HoldCooldownProblem  # with `Retry-After`
    IDEMPOTENCY_KEY_IN_USE = 409, "IDEMPOTENCY_KEY_IN_USE", ConflictProblem
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
    IDEMPOTENCY_KEY_REUSED = 422, "IDEMPOTENCY_KEY_REUSED", ValidationProblem
    UNSTORABLE_VALUE = 422, "UNSTORABLE_VALUE", ValidationProblem  # a value the database driver refuses
    # 413, before the body is read; 429 with `Retry-After`
    PAYLOAD_TOO_LARGE = 413, "PAYLOAD_TOO_LARGE", PayloadTooLargeProblem
    RATE_LIMITED = 429, "RATE_LIMITED", RateLimitedProblem
    # 503; DATABASE_BUSY with `Retry-After: 1`
    DATABASE_BUSY = 503, "DATABASE_BUSY", ServiceUnavailableProblem
    DATABASE_UNAVAILABLE = 503, "DATABASE_UNAVAILABLE", ServiceUnavailableProblem
    DATABASE_FULL = 503, "DATABASE_FULL", ServiceUnavailableProblem
    DATABASE_READ_ONLY = 503, "DATABASE_READ_ONLY", ServiceUnavailableProblem
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


class LiveClaim(NamedTuple):
    """A slot's live claim as the service saw it: whose it is, its status, until when, its id."""

    owner_id: uuid.UUID
    status: HoldStatus
    held_until: datetime
    hold_id: uuid.UUID


class SlotUnavailable(Conflict):
    """The slot already has a live claim (409); `claim` is that claim when known (not all of it is shown)."""

    def __init__(
        self,
        code: Code,
        detail: str,
        *,
        claim: LiveClaim | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ):
        super().__init__(code, detail, headers=headers, **extra)
        self.claim = claim


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
    headers = {"Retry-After": "5"}
    if backend is None:
        return ServiceUnavailable(Code.DATABASE_UNAVAILABLE, detail, headers=headers)
    return ServiceUnavailable(Code.DATABASE_UNAVAILABLE, detail, headers=headers, database=backend)


def _database_unreachable() -> ServiceUnavailable:
    return database_busy("The database cannot be reached (restarting?); retry shortly.")


def database_cannot_write(code: Code, detail: str) -> ServiceUnavailable:
    """The database answers but refuses writes (out of space, read-only): an operator must act."""
    return ServiceUnavailable(code, detail, headers={"Retry-After": "60"})


def problem_response(
    status: int, title: str, code: str, detail: str, headers: Mapping[str, str] | None = None, **extra: object
) -> Response:
    """Render one RFC 9457 problem document."""
    body = {
        "type": _problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    # The request id goes in the body, and in the headers too: a 500 is sent outside the middleware that adds it.
    if (request_id := current_request_id()) is not None:
        body["request_id"] = request_id
        headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    # Encoded in one pass (datetimes, UUIDs and enums as their JSON forms), not made JSON-able and then dumped.
    return Response(to_json(body), status, headers, PROBLEM_JSON)


@lru_cache(maxsize=len(Code) * 2)
def _problem_type(code: str) -> str:
    return f"urn:booking:problem:{code.lower().replace('_', '-')}"


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    if exc.status >= 500:
        # A 503 is the service's trouble, not the caller's: say why, with the failure behind it.
        cause = exc.__cause__ or exc
        log.warning("%s %s: %d %s: %s", request.method, request.url.path, exc.status, exc.code, cause, exc_info=cause)
    # For the metrics (observability.py), which count refusals by code without reading the body back.
    request.scope[PROBLEM_CODE] = exc.code
    return problem_response(exc.status, exc.title, exc.code, exc.detail, exc.headers, **exc.extra)


async def _validation_error(_: Request, exc: Exception) -> Response:
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


async def _http_error(_: Request, exc: Exception) -> Response:
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
_FULL_SQLSTATES = {"53100"}  # disk_full
_READ_ONLY_SQLSTATES = {"25006"}  # read_only_sql_transaction (a standby, default_transaction_read_only)
# SQLite's primary result codes (the sqlite3 module's `sqlite_errorname`, extended codes cut to it).
_SQLITE_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED"}
_SQLITE_GONE = {"SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_NOTADB"}


def database_problem(exc: DBAPIError | PoolTimeout, *, health: bool = False) -> DomainError | None:
    """The problem a database failure is reported as; None when it is not one we recognise.

    A PostgreSQL server that cannot be reached (restarting, refused, connection lost) is
    DATABASE_BUSY with `Retry-After` for a request, which should simply retry; /health
    (`health=True`) says what it is, DATABASE_UNAVAILABLE.
    """
    unreachable = database_unavailable if health else _database_unreachable
    if isinstance(exc, PoolTimeout):
        return database_busy("No database connection was free in time; retry shortly.")
    sqlstate: str | None = getattr(exc.orig, "sqlstate", None)
    sqlite_error: str | None = getattr(exc.orig, "sqlite_errorname", None)  # SQLITE_READONLY_DBMOVED → READONLY
    sqlite_name = "_".join(sqlite_error.split("_")[:2]) if sqlite_error else None
    if isinstance(exc, IntegrityError):
        return Conflict(Code.CONSTRAINT_VIOLATION, "The change conflicts with stored data.")
    if sqlstate in _RETRYABLE_SQLSTATES:
        return Conflict(
            Code.TRANSACTION_CONFLICT, "A concurrent change won; retry the request.", headers={"Retry-After": "0"}
        )
    if sqlstate in _FULL_SQLSTATES or sqlite_name == "SQLITE_FULL":
        return database_cannot_write(Code.DATABASE_FULL, "The database is out of space; nothing was changed.")
    if sqlstate in _READ_ONLY_SQLSTATES or sqlite_name == "SQLITE_READONLY":
        return database_cannot_write(Code.DATABASE_READ_ONLY, "The database refuses writes; nothing was changed.")
    if sqlstate is not None and (sqlstate in _BUSY_SQLSTATES or sqlstate.startswith(("53", "57P"))):
        return database_busy("The database is overloaded or restarting; retry shortly.")
    if sqlite_name in _SQLITE_BUSY or "database is locked" in str(exc.orig):
        return database_busy("The database is busy; retry shortly.")
    if sqlite_name in _SQLITE_GONE:
        return database_unavailable()  # the file itself is gone or broken: retrying will not help
    if exc.connection_invalidated or (sqlstate or "").startswith("08"):
        return unreachable()
    if sqlstate is None and sqlite_name is None:
        # A driver error without an SQL state: psycopg's own connection failures (refused, lost)
        # are OperationalError or InterfaceError; a DataError is a value the driver would not
        # send (a NUL byte in a text field). Anything else is a bug, and stays a 500.
        if isinstance(exc, OperationalError | InterfaceError):
            return unreachable()
        if isinstance(exc, DataError):
            return InvalidInput(Code.UNSTORABLE_VALUE, "A value in the request cannot be stored.")
    return None


async def _database_error(request: Request, exc: Exception) -> Response:
    # Domain code already turns the expected races into domain errors; this is the backstop
    # that keeps any other lost race or overload a 409/503 rather than a 500.
    assert isinstance(exc, DBAPIError | PoolTimeout)
    problem = database_problem(exc)
    if problem is None:
        log.error("%s %s: unexpected database error", request.method, request.url.path, exc_info=exc)
        return await _unexpected_error(request, exc)
    if problem.status < 500:
        log.warning("%s %s: %d %s: %s", request.method, request.url.path, problem.status, problem.code, exc)
    problem.__cause__ = exc
    return await _domain_error(request, problem)


async def _unexpected_error(_: Request, exc: Exception) -> Response:
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
