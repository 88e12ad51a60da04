"""The OpenAPI document, as front-end teams' generators read it: problems, security, exact schemas, links.

FastAPI builds the document from the routes; this finishes it: each error as the problem+json
schema of its status with the codes the route declared (`errors.problems`), each operation's
security as its dependencies enforce it, optional bodies as optional references, integer
bounds as integers, and the links from one operation's response to the next (`LINKS`).
"""

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic.json_schema import models_json_schema

import auth
from errors import PROBLEM_JSON, Code

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
            operation["security"] = _security(routes[method, path])
            _only_problem_json(operation)
            _optional_body_as_reference(operation)
            for status, response in operation["responses"].items():
                if links := LINKS.get((operation["operationId"], status)):
                    response["links"] = links
    components = document.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components.setdefault("schemas", {}).update(_problem_schemas(document))
    _integer_bounds(document)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the finished document at /openapi.json (built once, on first request)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(app, build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
