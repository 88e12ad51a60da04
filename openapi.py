"""The OpenAPI document, as front-end teams' generators read it: problems, security, exact schemas, links.

FastAPI builds the document from the routes; this finishes it: each error as the problem+json
schema of its status with the codes the route declared (`problems`, below), each operation's
security as its dependencies enforce it, optional bodies as optional references, integer
bounds as integers, and the links from one operation's response to the next (`LINKS`).
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic.json_schema import models_json_schema

import auth
from errors import PROBLEM_JSON, Code
from schemas import Problem

# --- a route's documented errors: `responses=problems(Code..., ...)` -------------------------------
# Generated from the Code registry (errors.py), so the document cannot drift from what is raised.

_DESCRIPTIONS = {
    400: "A malformed header (Idempotency-Key)",
    401: "Missing or invalid bearer token",
    403: "Not allowed (not the owner, not admin, or user_id mismatch)",
    404: "Not found",
    409: "Conflicts with the current state",
    410: "Hold expired, released or cancelled",
    413: "The request body is over 64 KiB (refused before it was read)",
    422: "Invalid input",
    429: "Too many requests of this kind; retry after Retry-After seconds",
    503: "The database is busy, does not answer, or cannot write",
}

_RETRY_AFTER = {
    "description": "Seconds to wait before retrying: 0 with TRANSACTION_CONFLICT, 1 with DATABASE_BUSY, "
    "5 with DATABASE_UNAVAILABLE, 60 when the database cannot write; with HOLD_COOLDOWN and "
    "RATE_LIMITED, until the wait is over",
    "schema": {"type": "integer", "minimum": 0},
}
# Response headers by status, and the codes that send them.
_HEADERS: dict[int, dict[str, tuple[frozenset[Code], dict[str, Any]]]] = {
    401: {
        "WWW-Authenticate": (
            frozenset({Code.MISSING_TOKEN, Code.INVALID_TOKEN}),
            {"description": "The scheme to authenticate with", "schema": {"const": "Bearer"}},
        )
    },
    409: {"Retry-After": (frozenset({Code.TRANSACTION_CONFLICT, Code.HOLD_COOLDOWN}), _RETRY_AFTER)},
    429: {"Retry-After": (frozenset({Code.RATE_LIMITED}), _RETRY_AFTER)},
    503: {
        "Retry-After": (
            frozenset({Code.DATABASE_BUSY, Code.DATABASE_UNAVAILABLE, Code.DATABASE_FULL, Code.DATABASE_READ_ONLY}),
            _RETRY_AFTER,
        )
    },
}

# Every route's work is one database call (or several): any of them can meet a busy or absent database.
DATABASE_CODES = (Code.DATABASE_BUSY, Code.DATABASE_UNAVAILABLE)
# A write can also lose a PostgreSQL race (deadlock, serialization) or hit a constraint the
# domain code did not foresee (409s), meet a database that cannot write (503s), carry a value
# the driver refuses (422), or send a body over the limit (413).
WRITE_CODES = (
    Code.TRANSACTION_CONFLICT,
    Code.CONSTRAINT_VIOLATION,
    Code.UNSTORABLE_VALUE,
    Code.PAYLOAD_TOO_LARGE,
    Code.DATABASE_FULL,
    Code.DATABASE_READ_ONLY,
)
# A POST that takes an Idempotency-Key (idempotency.py).
IDEMPOTENT_CODES = (Code.INVALID_IDEMPOTENCY_KEY, Code.IDEMPOTENCY_KEY_REUSED, Code.IDEMPOTENCY_KEY_IN_USE)


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
        # A header is required only when every code of the status sends it: of a route's 409s, only
        # TRANSACTION_CONFLICT and HOLD_COOLDOWN carry Retry-After.
        headers = {
            name: {**header, "required": set(group) <= senders}
            for name, (senders, header) in _HEADERS.get(status, {}).items()
            if senders & set(group)
        }
        if headers:
            response["headers"] = headers
        responses[status] = response
    return responses


USER_TOKEN = "userToken"
ADMIN_TOKEN = "adminToken"
SECURITY_SCHEMES = {
    USER_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "A user's token: POST /users returns the first, POST /users/{user_id}/token more",
    },
    ADMIN_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "The service's ADMIN_TOKEN (printed at start-up when generated)",
    },
}
# By the dependency that guards a route: admin only, a user, a user or nobody; none is public.
_SECURITY: list[tuple[Callable[..., Any], list[dict[str, list[str]]]]] = [
    (auth.require_admin, [{ADMIN_TOKEN: []}]),
    (auth.get_current_user_id, [{USER_TOKEN: []}]),
    # `{}`: anonymous callers are served too (every hold then reads HELD_BY_OTHER).
    (auth.get_viewer_id, [{}, {USER_TOKEN: []}]),
]


# OpenAPI links: which value of a response the next operation takes, so a reader (and the
# schemathesis stateful run, tests/test_schemathesis.py) can walk room → slot → hold →
# confirm/release/extend → cancel with real ids. By operation and status: link name → Link object.
_SLOT_ID = "$response.body#/id"
_HOLD_ID = {"hold_id": "$response.body#/hold_id"}
_HOLD_SLOT = {"slot_id": "$response.body#/slot_id"}
LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("registerUser", "201"): {
        "IssueUserToken": {"operationId": "issueUserToken", "parameters": {"user_id": "$response.body#/id"}},
    },
    ("createRoom", "201"): {
        "GetRoom": {"operationId": "getRoom", "parameters": {"room_id": "$response.body#/id"}},
        "CreateSlot": {"operationId": "createSlot", "parameters": {"room_id": "$response.body#/id"}},
    },
    ("createSlot", "201"): {
        "HoldSlot": {"operationId": "createHold", "requestBody": {"slot_id": _SLOT_ID}},
        "GetSlot": {"operationId": "getSlot", "parameters": {"slot_id": _SLOT_ID}},
        "DeleteSlot": {"operationId": "deleteSlot", "parameters": {"slot_id": _SLOT_ID}},
    },
    ("listSlots", "200"): {
        "HoldFirstSlot": {"operationId": "createHold", "requestBody": {"slot_id": "$response.body#/items/0/id"}},
        "GetFirstSlot": {"operationId": "getSlot", "parameters": {"slot_id": "$response.body#/items/0/id"}},
    },
    ("getSlot", "200"): {
        "HoldSlot": {"operationId": "createHold", "requestBody": {"slot_id": _SLOT_ID}},
    },
    ("createHold", "201"): {
        "ConfirmHold": {"operationId": "confirmHold", "parameters": _HOLD_ID},
        "ReleaseHold": {"operationId": "releaseHold", "parameters": _HOLD_ID},
        "ExtendHold": {"operationId": "extendHold", "parameters": _HOLD_ID},
        "GetHold": {"operationId": "getHold", "parameters": _HOLD_ID},
        "GetHoldHistory": {"operationId": "getHoldHistory", "parameters": _HOLD_ID},
    },
    # Refused because the caller already holds the slot: the 409 names that hold; go on with it.
    ("createHold", "409"): {
        "ConfirmOwnHold": {"operationId": "confirmHold", "parameters": _HOLD_ID},
        "ReleaseOwnHold": {"operationId": "releaseHold", "parameters": _HOLD_ID},
    },
    ("extendHold", "200"): {
        "ConfirmHold": {"operationId": "confirmHold", "parameters": _HOLD_ID},
        "ReleaseHold": {"operationId": "releaseHold", "parameters": _HOLD_ID},
    },
    ("confirmHold", "200"): {
        "CancelHold": {"operationId": "cancelHold", "parameters": _HOLD_ID},
        "GetHoldHistory": {"operationId": "getHoldHistory", "parameters": _HOLD_ID},
    },
    # Released or cancelled, the slot is free again: hold it once more.
    ("releaseHold", "200"): {"HoldSlotAgain": {"operationId": "createHold", "requestBody": _HOLD_SLOT}},
    ("cancelHold", "200"): {"HoldSlotAgain": {"operationId": "createHold", "requestBody": _HOLD_SLOT}},
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _security(route: APIRoute) -> list[dict[str, list[str]]]:
    calls = set(_calls(route.dependant))
    for guard, security in _SECURITY:
        if guard in calls:
            return security
    return []


def _set_security(operation: dict[str, Any], security: list[dict[str, list[str]]]) -> None:
    # Placed where FastAPI wrote it while the guards took an `HTTPBearer` sub-dependency (after
    # the operation's id when it has parameters or a body), so the served document keeps its
    # order; the guards now read the Authorization header themselves (auth.bearer_token).
    if not security or not ("parameters" in operation or "requestBody" in operation):
        operation["security"] = security
        return
    items = list(operation.items())
    at = next(i for i, (key, _) in enumerate(items) if key == "operationId") + 1
    operation.clear()
    operation.update([*items[:at], ("security", security), *items[at:]])


def _problem_schemas(document: dict[str, Any]) -> dict[str, Any]:
    """The problem schemas the operations refer to, as the document's components."""
    text = str(document)
    used = [schema for schema in dict.fromkeys(code.schema for code in Code) if f"/{schema.__name__}'" in text]
    _, definitions = models_json_schema(
        [(schema, "serialization") for schema in used], ref_template="#/components/schemas/{model}"
    )
    components: dict[str, Any] = definitions.get("$defs", {})
    return components


def _only_problem_json(operation: dict[str, Any]) -> None:
    # FastAPI files every response under the route's media type too; errors are sent as
    # application/problem+json only.
    for status, response in operation["responses"].items():
        content = response.get("content", {})
        if status[0] in "45" and PROBLEM_JSON in content:
            response["content"] = {PROBLEM_JSON: content[PROBLEM_JSON]}


def _optional_body_as_reference(operation: dict[str, Any]) -> None:
    # `data: HoldAction | None = None` is published as anyOf [HoldAction, null]; generators then
    # send their "unset" marker as the body. An optional body is `required: false` and the reference.
    body = operation.get("requestBody")
    if body is None or body.get("required"):
        return
    for media in body.get("content", {}).values():
        variants = media.get("schema", {}).get("anyOf", [])
        refs = [variant for variant in variants if "$ref" in variant]
        if len(refs) == 1 and len(variants) == 2 and {"type": "null"} in variants:
            media["schema"] = refs[0]


def _integer_bounds(node: Any) -> None:
    # Pydantic writes some integer bounds as floats (100000.0); an integer's bounds are integers.
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if isinstance(node.get(key), float) and node[key].is_integer():
                    node[key] = int(node[key])
        for value in node.values():
            _integer_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _integer_bounds(value)


# On the success of an operation that takes an Idempotency-Key (idempotency.py).
IDEMPOTENCY_HEADER, REPLAYED_HEADER = "Idempotency-Key", "Idempotent-Replayed"
_REPLAYED = {
    "description": "`true` when this is the stored response to an earlier request with the same Idempotency-Key",
    "required": False,
    "schema": {"type": "string", "enum": ["true"]},
}


def _finish(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    # Included routers keep their routes behind a context that carries the prefix.
    routes = {
        (method.lower(), context.path_format): context.original_route
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in context.original_route.methods or ()
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            _set_security(operation, _security(routes[method, path]))
            _only_problem_json(operation)
            _optional_body_as_reference(operation)
            replayable = any(p["name"] == IDEMPOTENCY_HEADER for p in operation.get("parameters", []))
            for status, response in operation["responses"].items():
                if links := LINKS.get((operation["operationId"], status)):
                    response["links"] = links
                if replayable and status.startswith("2"):
                    response.setdefault("headers", {})[REPLAYED_HEADER] = _REPLAYED
    components = document.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components.setdefault("schemas", {}).update(_problem_schemas(document))
    _integer_bounds(document)
    return document


def _in_order(paths: dict[str, Any], order: Sequence[str]) -> dict[str, Any]:
    # Stable: a path `order` does not name keeps its place after the ones it names.
    rank = {path: index for index, path in enumerate(dict.fromkeys(order))}
    return dict(sorted(paths.items(), key=lambda item: rank.get(item[0], len(rank))))


def install_openapi(app: FastAPI, path_order: Sequence[str] = ()) -> None:
    """Serve the finished document at /openapi.json (built once, on first request), its paths in `path_order`.

    FastAPI lists paths in the order requests are matched; main.py matches the hot routers
    first but documents them in their own order.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            document["paths"] = _in_order(document["paths"], path_order)
            app.openapi_schema = _finish(app, document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
