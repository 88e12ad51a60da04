"""What each request leaves behind: its id echoed in `X-Request-ID`, one JSON access-log line, and its metrics.

A pure ASGI middleware (no BaseHTTPMiddleware task per request), outermost of the app's own, so
413s, 429s, CORS preflights and streams are timed, logged and carry the id like everything else.
"""

import json
import logging
import sys
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

import metrics
from errors import PROBLEM_CODE, Code
from requestid import adopt_request_id
from state import AppState

ACCESS_LOGGER = "booking.access"
_REQUEST_ID = b"x-request-id"
# The hold outcomes counted from the HTTP layer: (method, route template) -> which counters.
_CREATE_HOLD = ("POST", "/holds")
_CONFIRM_HOLD = ("POST", "/holds/{hold_id}/confirm")

access_log = logging.getLogger(ACCESS_LOGGER)


class _StdoutHandler(logging.Handler):
    """One line per record on the current sys.stdout (looked up per record, so test capture keeps working)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def configure_access_log() -> None:
    """Send access lines to stdout, unless logging was configured for `booking.access` already."""
    if access_log.handlers:
        return
    access_log.addHandler(_StdoutHandler())
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def _route_template(scope: Scope) -> str:
    # The matched route's template, never the raw path of an API route (ids would make labels unbounded).
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):  # FastAPI's routes
        return path
    if "endpoint" not in scope:
        return "unmatched"
    # Starlette's own routes: the OpenAPI document and /docs (fixed paths), and the static files' mount.
    return f"{scope['root_path']}/{{path}}" if "app_root_path" in scope else str(scope["path"])


def _count_holds(method: str, route: str, status: int, problem_code: str) -> None:
    if (method, route) == _CREATE_HOLD:
        if status == 201:
            metrics.HOLDS_CREATED.inc()
        elif status == 409:
            metrics.HOLDS_REFUSED.labels(problem_code).inc()
    elif (method, route) == _CONFIRM_HOLD:
        if status == 200:
            metrics.HOLDS_CONFIRMED.inc()
        elif status == 410 and problem_code == Code.HOLD_EXPIRED.code:
            metrics.HOLDS_LAPSED_AT_CONFIRM.inc()


class RequestObservability:
    """Adopts or makes the request id, echoes it, and logs and measures every HTTP request."""

    def __init__(self, app: ASGIApp, *, log_requests: bool) -> None:
        self.app = app
        self.log_requests = log_requests
        self.multiprocess = metrics.multiprocess()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent_id = next((value for name, value in scope["headers"] if name == _REQUEST_ID), None)
        request_id = adopt_request_id(sent_id)
        id_header = (_REQUEST_ID, request_id.encode())
        status = 500  # what ServerErrorMiddleware answers if the app fails before starting a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                if not any(name.lower() == _REQUEST_ID for name, _ in headers):  # problem+json carries it already
                    message["headers"] = [*headers, id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            method, route = scope["method"], _route_template(scope)
            requests, latency = metrics.http_series(method, route, status)
            requests.inc()
            latency.observe(seconds)
            _count_holds(method, route, status, scope.get(PROBLEM_CODE, "UNKNOWN"))
            if self.multiprocess:
                # Each worker's pool gauge is only as fresh as its last request; a scrape adds them up.
                app_state = scope["app"].state
                if isinstance(app_state, AppState):
                    metrics.observe_pool(app_state.db.pool_state())
            if self.log_requests and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                line = {
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "request_id": request_id,
                    "client": client[0] if client else None,
                }
                access_log.info(json.dumps(line))
