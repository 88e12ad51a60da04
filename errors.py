"""Domain errors that carry an HTTP status and a stable code, and the one problem+json renderer."""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_jsonable_python
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from requestid import HEADER as REQUEST_ID_HEADER
from requestid import current_request_id
from schemas import Problem

# Every 5xx is logged here with its cause; uvicorn configures no handler, so WARNING and above
# reach stderr through logging's last-resort handler unless the deployment configures one.
log = logging.getLogger("booking.errors")

PROBLEM_JSON = "application/problem+json"
CONFIRM_GONE_DETAIL = "Hold not found or expired."


class DomainError(Exception):
    """A failure the API reports to its caller; subclasses fix status and title."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, code: str, detail: str, *, headers: Mapping[str, str] | None = None, **extra: object):
        super().__init__(detail)
        self.code = code
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

    def __init__(self, code: str, detail: str, **extra: object):
        super().__init__(code, detail, headers={"WWW-Authenticate": "Bearer"}, **extra)


class Forbidden(DomainError):
    """Authenticated, but not allowed to do this (403)."""

    status = 403
    title = "Forbidden"


class NotHoldOwner(Forbidden):
    """The hold belongs to another user (403)."""

    def __init__(self) -> None:
        super().__init__("NOT_HOLD_OWNER", "This hold belongs to another user.")


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
    return ServiceUnavailable("DATABASE_BUSY", detail, headers={"Retry-After": "1"})


def database_unavailable(backend: str | None = None) -> ServiceUnavailable:
    """The database does not answer at all; /health also names the backend it tried."""
    detail = "The database does not answer."
    headers = {"Retry-After": "5"}
    if backend is None:
        return ServiceUnavailable("DATABASE_UNAVAILABLE", detail, headers=headers)
    return ServiceUnavailable("DATABASE_UNAVAILABLE", detail, headers=headers, database=backend)


def database_cannot_write(code: str, detail: str) -> ServiceUnavailable:
    """The database answers but refuses writes (out of space, read-only): an operator must act."""
    return ServiceUnavailable(code, detail, headers={"Retry-After": "60"})


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
    # The request id goes in the body, and in the headers too: a 500 is sent outside the middleware that adds it.
    if (request_id := current_request_id()) is not None:
        body["request_id"] = request_id
        headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    return JSONResponse(to_jsonable_python(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    if exc.status >= 500:
        # A 503 is the service's trouble, not the caller's: say why, with the failure behind it.
        cause = exc.__cause__ or exc
        log.warning("%s %s: %d %s: %s", request.method, request.url.path, exc.status, exc.code, cause, exc_info=cause)
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
        "MALFORMED_JSON" if malformed else "VALIDATION_ERROR",
        "The request body is not valid JSON." if malformed else "The request does not match the schema.",
        errors=errors,
    )


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 401: "UNAUTHENTICATED", 403: "FORBIDDEN"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI raises a bare 400 only when it cannot decode a request body (e.g. not UTF-8).
        return problem_response(422, "Unprocessable content", "MALFORMED_JSON", "The request body is not valid JSON.")
    code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
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


def database_problem(exc: DBAPIError | PoolTimeout) -> DomainError | None:
    """The problem a database failure is reported as; None when it is not one we recognise."""
    if isinstance(exc, PoolTimeout):
        return database_busy("No database connection was free in time; retry shortly.")
    sqlstate: str | None = getattr(exc.orig, "sqlstate", None)
    sqlite_error: str | None = getattr(exc.orig, "sqlite_errorname", None)  # SQLITE_READONLY_DBMOVED → READONLY
    sqlite_name = "_".join(sqlite_error.split("_")[:2]) if sqlite_error else None
    if isinstance(exc, IntegrityError):
        return Conflict("CONSTRAINT_VIOLATION", "The change conflicts with stored data.")
    if sqlstate in _RETRYABLE_SQLSTATES:
        return Conflict(
            "TRANSACTION_CONFLICT", "A concurrent change won; retry the request.", headers={"Retry-After": "0"}
        )
    if sqlstate in _FULL_SQLSTATES or sqlite_name == "SQLITE_FULL":
        return database_cannot_write("DATABASE_FULL", "The database is out of space; nothing was changed.")
    if sqlstate in _READ_ONLY_SQLSTATES or sqlite_name == "SQLITE_READONLY":
        return database_cannot_write("DATABASE_READ_ONLY", "The database refuses writes; nothing was changed.")
    if sqlstate is not None and (sqlstate in _BUSY_SQLSTATES or sqlstate.startswith(("53", "57P"))):
        return database_busy("The database is overloaded or restarting; retry shortly.")
    if sqlite_name in _SQLITE_BUSY or "database is locked" in str(exc.orig):
        return database_busy("The database is busy; retry shortly.")
    if exc.connection_invalidated or (sqlstate or "").startswith("08") or sqlite_name in _SQLITE_GONE:
        return database_unavailable()
    if sqlstate is None and sqlite_name is None:
        # A driver error without an SQL state: psycopg's own connection failures (refused, lost)
        # are OperationalError or InterfaceError; a DataError is a value the driver would not
        # send (a NUL byte in a text field). Anything else is a bug, and stays a 500.
        if isinstance(exc, OperationalError | InterfaceError):
            return database_unavailable()
        if isinstance(exc, DataError):
            return InvalidInput("UNSTORABLE_VALUE", "A value in the request cannot be stored.")
    return None


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
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


async def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    # Still a 500, but in the same shape as every other error, so clients parse one format.
    return problem_response(500, "Internal server error", "INTERNAL_ERROR", "An unexpected error occurred.")


def _document_problems_as_problem_json(app: FastAPI) -> None:
    # FastAPI files a response `model` under application/json; errors are sent as
    # application/problem+json, so move each error schema to the media type actually sent.
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    for response in operation.get("responses", {}).values():
                        content = response.get("content", {})
                        if PROBLEM_JSON in content and "application/json" in content:
                            content[PROBLEM_JSON] = content.pop("application/json")
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Render every error the app can raise as application/problem+json, and document it so."""
    _document_problems_as_problem_json(app)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    app.add_exception_handler(Exception, _unexpected_error)


def problem_schema(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries so /docs shows each error a route can return."""
    descriptions = {
        401: "Missing or invalid bearer token",
        403: "Not allowed (not the owner, not admin, or user_id mismatch)",
        404: "Not found",
        409: "Conflicts with the current state",
        410: "Hold expired, released or cancelled",
        422: "Invalid input",
        503: "Database unavailable",
    }
    return {
        status: {"model": Problem, "description": descriptions.get(status, "Error"), "content": {PROBLEM_JSON: {}}}
        for status in statuses
    }
