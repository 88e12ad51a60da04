"""The HTTP layer: one router module per resource, and how every route sends its body."""

from collections.abc import Mapping, Sequence

from pydantic import BaseModel
from pydantic_core import to_json
from starlette.responses import Response

Content = BaseModel | Sequence[BaseModel] | Mapping[str, object]
"""A response body: a model, a list of them, or a model's fields as a dict (schemas.HoldReadFields)."""


def json_response(content: Content, status_code: int = 200) -> Response:
    """A response model (or a list of them, or a model's fields) as JSON, serialised once by pydantic.

    Every route returns its body this way: it skips FastAPI's second validation of an already
    valid model, while the route's `response_model` still documents the schema.
    """
    body = content.__pydantic_serializer__.to_json(content) if isinstance(content, BaseModel) else to_json(content)
    return Response(body, status_code, media_type="application/json")
