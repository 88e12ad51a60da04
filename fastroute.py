"""The hot routes' fast path: a well-formed request answered without FastAPI's per-request dependency machinery.

`FastRoute` is the route class of the routers whose requests dominate the load (slots, holds).
From the route's own declaration it builds, once, a plan: its path, query and header parameters
and its JSON body, each validated by FastAPI's own field for it, and its dependencies in the order
FastAPI solves them. A request is then answered in two phases:

1. Pure: every parameter read strictly (a query string parsed as Starlette parses it, with no
   repeated key and none the route does not read; a body under `application/json`) and
   validated. Anything else (a missing or invalid value, an odd encoding, a dependency override,
   telemetry) returns before any side effect, and FastAPI's own handler answers the request:
   every 422 and edge case is FastAPI's, as before.
2. The dependencies called as FastAPI calls them (sub-dependencies first, each once per
   request), then the endpoint: 401, 403, 429 and 400 come from the same functions in the same
   order. A well-formed request has no validation error, so nothing FastAPI would report after
   its dependencies is skipped.

Only what the plan can express gets a fast path (async dependencies taking the request, other
dependencies and aliased headers; scalar query and path parameters without a default factory;
one JSON body; an endpoint that returns a `Response`); any other route keeps FastAPI's handler
alone, as does a route included with dependencies beyond its own (the app's, or
`include_router(dependencies=...)`). See docs/design.md#the-request-edge.
"""

import inspect
import json
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request, Response, params
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, _effective_route_context_var
from fastapi.telemetry import get_telemetry_data
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

# What FastAPI reads as JSON (its `application/*json` check), as clients send it.
JSON_CONTENT_TYPES = frozenset({"application/json", "application/json; charset=utf-8"})

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


_REQUIRED = object()  # a parameter without a default
_SCALARS = (str, int, bool, float)


@dataclass(frozen=True)
class _Param:
    """One parameter: its keyword, where the request carries it, FastAPI's field for it, its default."""

    name: str
    source: typing.Literal["path", "query", "header"]
    key: str
    field: Any  # FastAPI's ModelField: `validate(value, values, loc=...)` gives (value, errors), as FastAPI calls it
    default: object


@dataclass(frozen=True)
class _Step:
    """One dependency, or the endpoint: what its call takes."""

    call: Callable[..., Awaitable[Any]]
    request_name: str | None
    params: tuple[_Param, ...]  # path, query, then header: FastAPI's order
    dependencies: tuple[tuple[str | None, int], ...]  # (keyword, index of the step) in declaration order


@dataclass(frozen=True)
class Plan:
    """A route's steps in the order FastAPI solves them (the endpoint last), the query keys it reads, its body."""

    steps: tuple[_Step, ...]
    query_keys: frozenset[str]
    body: _Param | None


def _scalar(annotation: Any) -> bool:
    """A single value, which FastAPI reads with `.get` (not a list, a model or a mapping)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _scalar(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return all(arg is type(None) or _scalar(arg) for arg in typing.get_args(annotation))
    return isinstance(annotation, type) and not issubclass(
        annotation, list | tuple | set | frozenset | dict | bytes | BaseModel
    )


def _param(field: Any, source: typing.Literal["path", "query", "header"]) -> _Param | None:
    info = field.field_info
    key = info.validation_alias or field.alias
    if not isinstance(key, str) or not _scalar(info.annotation) or info.validate_default:
        return None
    if info.default_factory is not None:
        return None  # FastAPI calls it per request; `field.default` would be one value for all
    if source == "header" and info.alias is None:
        return None  # only an aliased header is read under exactly its alias
    default = _REQUIRED if info.is_required() else field.default
    if default is not _REQUIRED and default is not None and not isinstance(default, _SCALARS):
        return None  # FastAPI deep-copies a default: only immutable ones are passed as they are
    return _Param(field.name, source, key, field, default)


def _add(dependant: Dependant, steps: list[_Step]) -> int | None:
    """Append `dependant`'s dependencies then itself to `steps`; its index, or None if the plan cannot express it."""
    call = dependant.call
    if (
        call is None
        or not inspect.iscoroutinefunction(call)
        or not dependant.use_cache
        or dependant.concurrency is not None
        or dependant.own_oauth_scopes
        or dependant.parent_oauth_scopes
        or dependant.cookie_params
        or dependant.websocket_param_name
        or dependant.http_connection_param_name
        or dependant.response_param_name
        or dependant.background_tasks_param_name
        or dependant.security_scopes_param_name
    ):
        return None
    dependencies: list[tuple[str | None, int]] = []
    for sub in dependant.dependencies:
        index = None if sub.body_params else _add(sub, steps)
        if index is None:
            return None
        dependencies.append((sub.name, index))
    params: list[_Param] = []
    sources: tuple[tuple[typing.Literal["path", "query", "header"], list[Any]], ...] = (
        ("path", dependant.path_params),
        ("query", dependant.query_params),
        ("header", dependant.header_params),
    )
    for source, fields in sources:
        for field in fields:
            param = _param(field, source)
            if param is None:
                return None
            params.append(param)
    steps.append(_Step(call, dependant.request_param_name, tuple(params), tuple(dependencies)))
    return len(steps) - 1


def plan_for(route: APIRoute) -> Plan | None:
    """The fast path's plan for a route; None when the route has anything the plan cannot express."""
    returns = inspect.signature(route.endpoint).return_annotation
    if not (
        isinstance(route.response_class, DefaultPlaceholder)
        and isinstance(returns, type)
        and issubclass(returns, Response)
        and len(route.dependant.body_params) <= 1
    ):
        return None
    steps: list[_Step] = []
    if _add(route.dependant, steps) is None:
        return None
    body = None
    if route.dependant.body_params:
        field = route.dependant.body_params[0]
        if route.body_field is not field or isinstance(field.field_info, params.Form):
            return None  # embedded in an object, or a form (read as a form, never as JSON)
        if field.field_info.default_factory is not None:
            return None
        default = _REQUIRED if field.field_info.is_required() else field.default
        if default is not _REQUIRED and default is not None:
            return None
        body = _Param(field.name, "query", "body", field, default)
    query_keys = frozenset(param.key for step in steps for param in step.params if param.source == "query")
    return Plan(tuple(steps), query_keys, body)


def _query(raw: bytes, keys: frozenset[str]) -> dict[str, str] | None:
    """The query string as Starlette parses it; None when it repeats a key or has one the route does not read."""
    found: dict[str, str] = {}
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key not in keys or key in found:
            return None
        found[key] = value
    return found


async def _body(request: Request, param: _Param) -> tuple[bool, object]:
    """(whether the fast path can take it, the body's value), read as FastAPI reads a single JSON body."""
    try:
        raw = await request.body()
    except ClientDisconnect:  # FastAPI's handler turns its own read's failure into its answer
        return False, None
    if not raw:
        return param.default is not _REQUIRED, param.default
    if request.headers.get("content-type") not in JSON_CONTENT_TYPES:
        return False, None
    try:
        document = json.loads(raw)  # what Starlette's Request.json does
    except Exception:  # not JSON, not UTF-8, nested too deep: FastAPI answers each its own way
        return False, None
    value, errors = param.field.validate(document, {}, loc=("body",))
    return not errors, value


async def _answer(plan: Plan, request: Request) -> Response | None:
    """The response, or None (before any side effect) when FastAPI's handler must answer."""
    query = _query(request.scope["query_string"], plan.query_keys)
    if query is None:
        return None
    path_params: Mapping[str, Any] = request.scope.get("path_params", {})
    values: list[dict[str, Any]] = []
    for step in plan.steps:
        own: dict[str, Any] = {}
        for param in step.params:
            if param.source == "path":
                raw = path_params.get(param.key)
            elif param.source == "query":
                raw = query.get(param.key)
            else:
                raw = request.headers.get(param.key)
            if raw is None:
                if param.default is _REQUIRED:
                    return None
                own[param.name] = param.default
                continue
            value, errors = param.field.validate(raw, own, loc=(param.source, param.key))
            if errors:
                return None
            own[param.name] = value
        values.append(own)
    if plan.body is not None:
        ok, body = await _body(request, plan.body)
        if not ok:
            return None
        values[-1][plan.body.name] = body
    # Every parameter is valid: from here on, exactly the calls FastAPI would make, in its order,
    # each dependency called once per request however many steps name it (FastAPI's cache).
    solved: list[Any] = []
    cache: dict[Callable[..., Awaitable[Any]], Any] = {}
    last = len(plan.steps) - 1
    for index, (step, own) in enumerate(zip(plan.steps, values, strict=True)):
        for name, dependency in step.dependencies:
            if name is not None:
                own[name] = solved[dependency]
        if step.request_name is not None:
            own[step.request_name] = request
        if index != last and step.call in cache:
            solved.append(cache[step.call])
            continue
        solved.append(await step.call(**own))
        cache.setdefault(step.call, solved[-1])
    response = solved[-1]
    assert isinstance(response, Response)
    return response


class FastRoute(APIRoute):
    """An APIRoute that answers a well-formed request by its plan, and any other one by FastAPI's own handler."""

    def get_route_handler(self) -> Handler:
        """FastAPI's handler, behind the fast path when the route has a plan."""
        handler = super().get_route_handler()
        # FastAPI builds a handler per inclusion, for the route with the dependencies of the app
        # and of every router it is included through; the plan reads the route's own
        # declaration only, so a route that gained any there keeps FastAPI's handler. (FastAPI's
        # own get_route_handler reads this context the same way; tests/test_fastroute.py fails
        # if a dependency added there is skipped.)
        included = _effective_route_context_var.get()
        if included is not None and included.original_route is self and included.dependencies != self.dependencies:
            return handler
        plan = plan_for(self)
        if plan is None:
            return handler

        async def answer(request: Request) -> Response:
            # Overrides (tests) and telemetry are FastAPI's business: its handler honours them.
            if get_telemetry_data() is None and not request.app.dependency_overrides:
                response = await _answer(plan, request)
                if response is not None:
                    return response
            return await handler(request)

        return answer
