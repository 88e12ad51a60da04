"""The OpenAPI document is the front-end's contract: valid, linted, and exact about ids, errors and security."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from openapi_spec_validator import validate

import main
from errors import Code
from main import create_app
from openapi import LINKS
from tests.factories import isolated_settings

ROOT = Path(__file__).resolve().parent.parent
REDOCLY = ROOT / "tools" / "redocly"
# In CI a missing node/npm is a failure, not a skip (as BOOKING_REQUIRE_POSTGRES is for PostgreSQL).
REQUIRE_NODE = os.environ.get("BOOKING_REQUIRE_NODE") == "1" or os.environ.get("CI") == "true"

OPERATION_IDS = {
    ("post", "/users"): "registerUser",
    ("get", "/users/me"): "getCurrentUser",
    ("post", "/users/{user_id}/token"): "issueUserToken",
    ("get", "/users/me/tokens"): "listMyTokens",
    ("delete", "/users/me/tokens/{token_id}"): "revokeMyToken",
    ("post", "/users/me/logout"): "logout",
    ("post", "/rooms"): "createRoom",
    ("get", "/rooms"): "listRooms",
    ("get", "/rooms/{room_id}"): "getRoom",
    ("post", "/rooms/{room_id}/slots"): "createSlot",
    ("get", "/slots"): "listSlots",
    ("get", "/slots/stream"): "streamSlots",
    ("get", "/slots/{slot_id}"): "getSlot",
    ("delete", "/slots/{slot_id}"): "deleteSlot",
    ("post", "/holds"): "createHold",
    ("get", "/holds"): "listHolds",
    ("get", "/holds/{hold_id}"): "getHold",
    ("get", "/holds/{hold_id}/history"): "getHoldHistory",
    ("post", "/holds/{hold_id}/confirm"): "confirmHold",
    ("post", "/holds/{hold_id}/release"): "releaseHold",
    ("post", "/holds/{hold_id}/extend"): "extendHold",
    ("post", "/holds/{hold_id}/cancel"): "cancelHold",
    ("get", "/health"): "getHealth",
    ("get", "/stats"): "getStats",
}
PUBLIC = {"registerUser", "listRooms", "getRoom", "getHealth", "getStats"}
OPTIONAL_USER = {"listSlots", "getSlot", "streamSlots"}
ADMIN_ONLY = {"issueUserToken", "createRoom", "createSlot", "deleteSlot"}
# Codes no route raises: Starlette's unknown path and method, and the last-resort 500.
UNROUTED = {Code.NOT_FOUND, Code.METHOD_NOT_ALLOWED, Code.INTERNAL_ERROR}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(isolated_settings()).openapi()


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for ops in document["paths"].values() for op in ops.values()}


def _problem_variants(response: dict[str, Any]) -> list[dict[str, Any]]:
    schema = response["content"]["application/problem+json"]["schema"]
    return schema.get("oneOf", [schema])


def _documented_codes(operation: dict[str, Any]) -> dict[str, set[str]]:
    """Status → the codes the operation's problem responses list."""
    codes: dict[str, set[str]] = {}
    for status, response in operation["responses"].items():
        if status[0] in "45":
            for variant in _problem_variants(response):
                codes.setdefault(status, set()).update(variant["allOf"][1]["properties"]["code"]["enum"])
    return codes


# --- the document is valid, and lints clean -----------------------------------------------------------


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def _npx() -> list[str] | None:
    if shutil.which("npm") is None or shutil.which("npx") is None:
        return None
    if not (REDOCLY / "node_modules" / ".bin" / "redocly").exists():
        subprocess.run(["npm", "ci", "--prefix", str(REDOCLY), "--no-audit", "--no-fund"], check=True, timeout=600)
    return ["npx", "--prefix", str(REDOCLY), "redocly"]


def test_redocly_lint_reports_no_errors(document: dict[str, Any], tmp_path: Path) -> None:
    npx = _npx()
    if npx is None:
        message = "npm/npx not found: cannot lint the OpenAPI document with @redocly/cli"
        if REQUIRE_NODE:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(document))
    result = subprocess.run(
        [*npx, "lint", str(path), "--config", str(ROOT / "redocly.yaml"), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
    )
    report = json.loads(result.stdout)
    errors = [problem for problem in report["problems"] if problem["severity"] == "error"]
    assert not errors, json.dumps(errors, indent=1)
    # The remaining warnings are the ones redocly.yaml justifies; a new one needs a justification too.
    warnings = sorted({problem["ruleId"] for problem in report["problems"]})
    assert warnings == ["info-license", "operation-4xx-response"], report["problems"]
    assert result.returncode == 0, result.stderr


# --- operation ids, security, servers -------------------------------------------------------------------


def test_every_operation_has_the_id_a_person_would_write(document: dict[str, Any]) -> None:
    found = {(method, path): op["operationId"] for path, ops in document["paths"].items() for method, op in ops.items()}
    assert found == OPERATION_IDS


def test_paths_are_listed_by_resource_though_the_hot_routers_are_matched_first(document: dict[str, Any]) -> None:
    app = create_app(isolated_settings())
    documented = [route.path for module in main.DOCUMENTED for route in module.router.routes]
    assert list(document["paths"]) == [path for path in dict.fromkeys(documented) if path in document["paths"]]
    matched = [context.path_format for context in iter_route_contexts(app.routes)]
    assert matched.index("/slots") < matched.index("/users")  # what the order is for
    assert sorted(main.MATCHED, key=id) == sorted(main.DOCUMENTED, key=id)


def test_security_is_declared_per_operation_as_enforced(document: dict[str, Any]) -> None:
    for operation_id, operation in _operations(document).items():
        security = operation["security"]
        if operation_id in PUBLIC:
            assert security == [], operation_id
        elif operation_id in OPTIONAL_USER:
            assert security == [{}, {"userToken": []}], operation_id
        elif operation_id in ADMIN_ONLY:
            assert security == [{"adminToken": []}], operation_id
        else:
            assert security == [{"userToken": []}], operation_id
    assert set(document["components"]["securitySchemes"]) == {"userToken", "adminToken"}


def test_document_names_a_server(document: dict[str, Any]) -> None:
    assert document["servers"] == [{"url": "/", "description": "The server this document was read from"}]


# --- errors: one schema per status, the codes each operation can return ----------------------------------


def test_every_error_is_problem_json_with_its_status_schema_and_codes(document: dict[str, Any]) -> None:
    by_code = {(code.status, code.code): code for code in Code}
    for operation_id, operation in _operations(document).items():
        for status, codes in _documented_codes(operation).items():
            assert set(operation["responses"][status]["content"]) == {"application/problem+json"}, operation_id
            for variant in _problem_variants(operation["responses"][status]):
                schema = variant["allOf"][0]["$ref"].rsplit("/", 1)[-1]
                for wire in variant["allOf"][1]["properties"]["code"]["enum"]:
                    code = by_code[int(status), wire]
                    assert code.schema.__name__ == schema, f"{operation_id} {status} {wire}"
            assert codes, f"{operation_id} {status} lists no code"


def test_registry_and_document_agree(document: dict[str, Any]) -> None:
    documented = {
        (int(status), code)
        for operation in _operations(document).values()
        for status, codes in _documented_codes(operation).items()
        for code in codes
    }
    registered = {(code.status, code.code) for code in Code if code not in UNROUTED}
    assert documented == registered


def test_problem_schemas_type_their_extra_members(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    unavailable = schemas["SlotUnavailableProblem"]["properties"]
    assert {"$ref": "#/components/schemas/SlotStatus"} in unavailable["slot_status"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in unavailable["held_until"]["anyOf"]
    assert {"type": "string", "format": "uuid"} in unavailable["hold_id"]["anyOf"]
    assert schemas["HoldGoneProblem"]["properties"]["hold_status"] == {
        "$ref": "#/components/schemas/HoldStatus",
        "description": "The hold's status now",
    }
    assert schemas["SlotOverlapProblem"]["properties"]["overlapping_slot_id"]["format"] == "uuid"
    assert schemas["ValidationProblem"]["properties"]["errors"]["anyOf"][0]["items"] == {
        "$ref": "#/components/schemas/ValidationIssue"
    }
    for name in ("UnauthorizedProblem", "ConflictProblem", "HoldGoneProblem", "ServiceUnavailableProblem"):
        assert {"type", "title", "status", "detail", "code"} <= set(schemas[name]["required"]), name
    assert "hold_status" in schemas["HoldGoneProblem"]["required"]


def test_every_operation_documents_503_with_retry_after(document: dict[str, Any]) -> None:
    for operation_id, operation in _operations(document).items():
        response = operation["responses"]["503"]
        assert "DATABASE_UNAVAILABLE" in _documented_codes(operation)["503"], operation_id
        if "DATABASE_BUSY" in _documented_codes(operation)["503"]:
            assert "Retry-After" in response["headers"], operation_id
    assert _documented_codes(_operations(document)["getHealth"])["503"] == {
        "DATABASE_UNAVAILABLE",
        "DATABASE_BUSY",
        "DATABASE_FULL",
        "DATABASE_READ_ONLY",
    }


def test_401_documents_www_authenticate_and_409_retry_after_where_sent(document: dict[str, Any]) -> None:
    for operation_id, operation in _operations(document).items():
        codes = _documented_codes(operation)
        if "401" in codes:
            assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]["required"], operation_id
        if "TRANSACTION_CONFLICT" in codes.get("409", set()):
            assert "Retry-After" in operation["responses"]["409"]["headers"], operation_id


def test_a_header_is_required_only_where_every_code_of_the_status_sends_it(document: dict[str, Any]) -> None:
    # Found by tests/test_schemathesis.py: a 409 HANDLE_TAKEN has no Retry-After, yet it was required.
    operations = _operations(document)
    for operation_id in ("registerUser", "createHold", "deleteSlot"):
        assert operations[operation_id]["responses"]["409"]["headers"]["Retry-After"]["required"] is False
    assert operations["createHold"]["responses"]["429"]["headers"]["Retry-After"]["required"] is True
    assert operations["getHealth"]["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    assert operations["createHold"]["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True


def test_create_hold_409_is_one_of_slot_unavailable_and_conflict(document: dict[str, Any]) -> None:
    variants = _problem_variants(_operations(document)["createHold"]["responses"]["409"])
    assert [(v["title"], v["allOf"][1]["properties"]["code"]["enum"]) for v in variants] == [
        ("SlotUnavailableProblem", ["SLOT_UNAVAILABLE"]),
        ("ConflictProblem", ["SLOT_STARTED", "IDEMPOTENCY_KEY_IN_USE", "TRANSACTION_CONFLICT", "CONSTRAINT_VIOLATION"]),
        ("HoldLimitProblem", ["HOLD_LIMIT_REACHED"]),
        ("HoldCooldownProblem", ["HOLD_COOLDOWN"]),
    ]


def test_no_framework_validation_schema_is_left(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in document["components"]["schemas"]


# Error classes called with a code, in the modules that raise them.
_RAISE = re.compile(
    r"(?<!class )\b(?:DomainError|InvalidInput|Unauthenticated|Forbidden|NotFound|Conflict|SlotUnavailable|"
    r"HoldGone|ServiceUnavailable)\(\s*([^,)\s]+)"
)


def test_every_code_raised_in_the_code_base_comes_from_the_registry() -> None:
    sources = [*ROOT.glob("*.py"), *ROOT.glob("routers/*.py")]
    raised = {match for path in sources for match in _RAISE.findall(path.read_text())}
    literal = {code for code in raised if not re.fullmatch(r"Code\.[A-Z_]+|code|[A-Z_]+_CODES\[[\w.]+\]", code)}
    assert not literal, f"error codes not taken from errors.Code: {literal}"
    named = {name for path in sources for name in re.findall(r"\bCode\.([A-Z_]+)", path.read_text())}
    assert named <= set(Code.__members__)


# --- request and response schemas --------------------------------------------------------------------------


def test_optional_action_bodies_are_optional_references(document: dict[str, Any]) -> None:
    for operation_id in ("confirmHold", "releaseHold", "extendHold", "cancelHold"):
        body = _operations(document)[operation_id]["requestBody"]
        assert not body.get("required", False), operation_id
        assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/HoldAction"}


def test_always_sent_members_are_required(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"hold_id", "expires_at", "held_until"} <= set(schemas["SlotRead"]["required"])
    assert "details" in schemas["Health"]["required"]


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_integer_bounds_are_integers(document: dict[str, Any]) -> None:
    for schema in _walk(document):
        if schema.get("type") == "integer":
            for key in ("minimum", "maximum"):
                assert not isinstance(schema.get(key), float), schema
    assert document["components"]["schemas"]["RoomCreate"]["properties"]["capacity"]["maximum"] == 100_000


def test_handle_publishes_its_pattern_and_length(document: dict[str, Any]) -> None:
    handle = document["components"]["schemas"]["UserCreate"]["properties"]["handle"]
    # What the server accepts: surrounding whitespace is stripped and letters are lower-cased.
    assert (handle["pattern"], handle["maxLength"]) == (r"^\s*[A-Za-z0-9_]{1,32}\s*$", 64)


def test_every_request_body_and_main_response_has_an_example(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for operation_id, operation in _operations(document).items():
        if "requestBody" in operation:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert schemas[ref.rsplit("/", 1)[-1]].get("examples"), operation_id
    for name in ("HoldRead", "SlotRead"):
        assert schemas[name]["examples"], name


def test_stream_is_documented_as_event_stream(document: dict[str, Any]) -> None:
    stream = _operations(document)["streamSlots"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert any(p["name"] == "Last-Event-ID" and p["in"] == "header" for p in stream["parameters"])


def test_links_walk_the_hold_lifecycle_with_real_parameters(document: dict[str, Any]) -> None:
    operations = _operations(document)
    found = {
        (operation_id, status, name): link
        for operation_id, operation in operations.items()
        for status, response in operation["responses"].items()
        for name, link in response.get("links", {}).items()
    }
    # Every link in the table is on a response the operation documents, and names parameters the target has.
    assert {(op, status) for op, status, _ in found} == set(LINKS)
    for (source, status, name), link in found.items():
        target = operations[link["operationId"]]
        names = {parameter["name"] for parameter in target.get("parameters", [])}
        assert set(link.get("parameters", {})) <= names, (source, status, name)
        if "requestBody" in link:
            body = target["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            assert set(link["requestBody"]) <= set(document["components"]["schemas"][body]["properties"])
    # The lifecycle: a listed slot is held, the hold confirmed, the booking cancelled.
    assert found["listSlots", "200", "HoldFirstSlot"]["requestBody"] == {"slot_id": "$response.body#/items/0/id"}
    assert found["createHold", "201", "ConfirmHold"]["parameters"] == {"hold_id": "$response.body#/hold_id"}
    assert found["confirmHold", "200", "CancelHold"]["operationId"] == "cancelHold"


def test_idempotent_operations_document_the_key_and_the_replay_header(document: dict[str, Any]) -> None:
    idempotent = {
        "registerUser",
        "issueUserToken",
        "createRoom",
        "createSlot",
        "createHold",
        "confirmHold",
        "releaseHold",
        "extendHold",
        "cancelHold",
    }
    for operation_id, operation in _operations(document).items():
        takes_key = any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in operation.get("parameters", []))
        assert takes_key == (operation_id in idempotent), operation_id
        if takes_key:
            success = next(r for status, r in operation["responses"].items() if status.startswith("2"))
            assert "Idempotent-Replayed" in success["headers"], operation_id
            assert {"INVALID_IDEMPOTENCY_KEY"} <= _documented_codes(operation)["400"], operation_id
