"""The request id: the caller's `X-Request-ID` when it looks sane, else a new one; readable anywhere in the request."""

import re
import uuid
from contextvars import ContextVar

HEADER = "X-Request-ID"
# 1-128 visible ASCII characters: safe to echo in a header and to write in a log line.
_SANE = re.compile(rb"[\x21-\x7e]{1,128}")

# Set by the request-id middleware (observability.py) for the request being handled; each request
# runs in its own task, so one request never sees another's id.
_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled (None outside a request)."""
    return _current.get()


def adopt_request_id(sent: bytes | None) -> str:
    """The id for a request that sent this header value (or none): kept if sane, else a new uuid4 hex."""
    request_id = sent.decode("ascii") if sent is not None and _SANE.fullmatch(sent) else uuid.uuid4().hex
    _current.set(request_id)
    return request_id
