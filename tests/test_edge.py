"""The request edge: 413 before a body is read whole, names without control or invisible characters,
maximum lengths in the OpenAPI document, CORS by setting, and the request id on every answer."""

import json
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

import catalog
from bodylimit import MAX_BODY_BYTES
from main import create_app
from observability import ACCESS_LOGGER
from tests.factories import ADMIN, ADMIN_TOKEN, assert_problem, isolated_settings, make_room, make_user
from tests.server import running_server

BIG = MAX_BODY_BYTES + 1


def _chunks(total: int, size: int = 8192) -> Iterator[bytes]:
    """A body with no Content-Length: sent chunked."""
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


# --- 413 before the body is read whole -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/holds", "/users", "/rooms", "/nowhere"])
def test_declared_body_over_64_kib_is_413_even_anonymous(client: TestClient, path: str) -> None:
    response = client.post(path, content=b" " * BIG, headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert response.headers["connection"] == "close"


def test_chunked_body_over_64_kib_is_413_before_the_401(client: TestClient) -> None:
    response = client.post("/holds", content=_chunks(BIG), headers={"Content-Type": "application/json"})
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")


def test_body_of_exactly_64_kib_is_read(client: TestClient) -> None:
    # Whitespace around valid JSON: the limit, not the parser, decides.
    body = json.dumps({"name": "Edge", "handle": "edge"}).encode()
    body += b" " * (MAX_BODY_BYTES - len(body))
    assert client.post("/users", content=body, headers={"Content-Type": "application/json"}).status_code == 201
    chunked = client.post("/users", content=_chunks(MAX_BODY_BYTES), headers={"Content-Type": "application/json"})
    assert_problem(chunked, 422, "MALFORMED_JSON")  # all read (and only blanks), not a 413


def test_unreadable_content_length_is_413(client: TestClient) -> None:
    # uvicorn refuses such a request itself (400); behind another server, no length is taken on trust.
    response = client.post("/users", content=b"{}", headers={"Content-Length": "12x"})
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")


def _raw_post(base_url: str, path: str, headers: list[str], body_sender: Any) -> bytes:
    """POST with a hand-made request (a body that would not be sent whole), returning the raw answer."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json", *headers, "", ""]
        sock.sendall("\r\n".join(head).encode())
        body_sender(sock)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


@pytest.mark.slow
def test_real_server_refuses_big_bodies_without_reading_them() -> None:
    env = {"DATABASE_URL": "sqlite:///:memory:", "ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false"}
    with running_server(env) as base_url:
        # 50 MB declared, 64 KiB + 1 sent: the answer comes without waiting for the rest.
        declared = _raw_post(
            base_url, "/holds", [f"Content-Length: {50 * 1024 * 1024}"], lambda sock: sock.sendall(b" " * BIG)
        )
        assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
        assert b'"code":"PAYLOAD_TOO_LARGE"' in declared

        def send_chunks(sock: socket.socket) -> None:
            for chunk in _chunks(BIG + 8192):
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            # never the final 0-length chunk: the server must answer without the end of the body

        chunked = _raw_post(base_url, "/holds", ["Transfer-Encoding: chunked"], send_chunks)
        assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
        assert b'"code":"PAYLOAD_TOO_LARGE"' in chunked

        with httpx.Client(base_url=base_url, timeout=10) as http:
            # The server still answers, and a stream carries the request id too.
            assert http.get("/health").status_code == 200
            with http.stream("GET", "/slots/stream", headers={"X-Request-ID": "stream-1"}) as stream:
                assert stream.status_code == 200
                assert stream.headers["x-request-id"] == "stream-1"


# --- names: no control, bidirectional or zero-width characters -----------------------------------

INVISIBLE = {
    "NUL": "a\x00b",
    "escape": "a\x1b[31mb",
    "right-to-left override": "abc\u202egpj.exe",
    "zero-width space": "Lab\u200b",
    "zero-width joiner": "La\u200db",
    "byte order mark": "\ufeffLab",
    "line separator": "Lab\u2028A",
    "paragraph separator": "Lab\u2029A",
}


@pytest.mark.parametrize("name", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_user_name_with_invisible_characters_is_422(client: TestClient, name: str) -> None:
    body = assert_problem(client.post("/users", json={"name": name, "handle": "eve"}), 422, "VALIDATION_ERROR")
    assert body["errors"][0]["loc"] == ["body", "name"]


@pytest.mark.parametrize("name", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_room_name_with_invisible_characters_is_422(client: TestClient, name: str) -> None:
    response = client.post("/rooms", json={"name": name, "capacity": 2}, headers=ADMIN)
    assert assert_problem(response, 422, "VALIDATION_ERROR")["errors"][0]["loc"] == ["body", "name"]


def test_name_with_a_lone_surrogate_is_422(client: TestClient) -> None:
    raw = b'{"name": "Lab\\ud800", "capacity": 2}'  # valid JSON; not a character at all
    response = client.post("/rooms", content=raw, headers={**ADMIN, "Content-Type": "application/json"})
    assert_problem(response, 422, "VALIDATION_ERROR")


def test_names_in_any_script_with_accents_and_emoji_are_accepted(client: TestClient) -> None:
    for name in ("Zoë's room", "会議室 3", "غرفة", "Salle 🎲", "Ελένη"):
        assert client.post("/users", json={"name": name, "handle": f"u_{uuid.uuid4().hex[:8]}"}).status_code == 201


def test_a_decomposed_accent_names_the_same_room_as_a_composed_one(client: TestClient) -> None:
    make_room(client, "Caf\u00e9")
    response = client.post("/rooms", json={"name": "Cafe\u0301", "capacity": 2}, headers=ADMIN)
    assert_problem(response, 409, "ROOM_NAME_TAKEN")


def test_handle_keeps_accepting_what_it_accepted(client: TestClient) -> None:
    assert make_user(client, "  Mixed_Case_9 ").handle == "mixed_case_9"
    for bad in ("", "a b", "é", "x" * 33, "a\x00"):
        assert_problem(client.post("/users", json={"name": "N", "handle": bad}), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "n" * 201), ("email", "a" * 64 + "@" + "b" * 250 + ".example"), ("handle", " " * 40 + "a" * 33)],
)
def test_over_long_user_fields_are_422(client: TestClient, field: str, value: str) -> None:
    body = {"name": "N", "handle": "longish", field: value}
    assert_problem(client.post("/users", json=body), 422, "VALIDATION_ERROR")


def test_over_long_cursor_is_422(client: TestClient) -> None:
    assert_problem(client.get("/slots", params={"cursor": "a" * 129}), 422, "VALIDATION_ERROR")


def test_openapi_documents_every_input_string_with_a_maximum_length(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    handle = schemas["UserCreate"]["properties"]["handle"]
    assert handle["pattern"] == r"^\s*[A-Za-z0-9_]{1,32}\s*$"
    for example in ("alice", "  Bob_1 "):
        assert re.fullmatch(handle["pattern"], example)
    unbounded = []
    for model in ("UserCreate", "RoomCreate"):
        for name, prop in schemas[model]["properties"].items():
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "string" and "maxLength" not in option:
                    unbounded.append(f"{model}.{name}")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                for option in parameter["schema"].get("anyOf", [parameter["schema"]]):
                    if option.get("type") == "string" and not option.get("format") and "maxLength" not in option:
                        unbounded.append(f"{method} {path} {parameter['name']}")
    assert unbounded == []


# --- CORS ----------------------------------------------------------------------------------------

ORIGIN = "https://shop.example"


def test_no_cors_headers_without_allowed_origins(client: TestClient) -> None:
    response = client.get("/rooms", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture
def cors_client() -> Iterator[TestClient]:
    settings = isolated_settings(cors_allow_origins=f"{ORIGIN}, https://other.example")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_preflight_from_an_allowed_origin_admits_the_api_headers(cors_client: TestClient) -> None:
    request_headers = "authorization,content-type,idempotency-key,last-event-id"
    response = cors_client.options(
        "/holds",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": request_headers,
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert set(request_headers.split(",")) <= allowed
    assert "x-request-id" in response.headers


def test_answers_to_an_allowed_origin_expose_request_id_and_retry_after(cors_client: TestClient) -> None:
    response = cors_client.post("/holds", json={}, headers={"Origin": ORIGIN})
    assert_problem(response, 401, "MISSING_TOKEN")
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "retry-after"} <= exposed


def test_other_origins_get_no_cors_headers(cors_client: TestClient) -> None:
    response = cors_client.get("/rooms", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = cors_client.options(
        "/holds", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400


# --- request ids and access logs -----------------------------------------------------------------


def test_a_sane_request_id_is_echoed(client: TestClient) -> None:
    assert client.get("/rooms", headers={"X-Request-ID": "req-42.a:b"}).headers["x-request-id"] == "req-42.a:b"


@pytest.mark.parametrize("sent", ["", "has space", "x" * 129, "tab\there"])
def test_an_unusable_request_id_is_replaced(client: TestClient, sent: str) -> None:
    response = client.get("/rooms", headers={"X-Request-ID": sent})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_every_answer_gets_a_new_id_without_one(client: TestClient) -> None:
    ids = {client.get("/rooms").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_problem_bodies_carry_the_request_id_once_in_the_headers(client: TestClient) -> None:
    for response in (
        client.get("/nowhere", headers={"X-Request-ID": "rid-1"}),
        client.post("/holds", json={}, headers={"X-Request-ID": "rid-1"}),
        client.post("/users", json={"name": "N"}, headers={"X-Request-ID": "rid-1"}),
        client.post("/users", content=b" " * BIG, headers={"X-Request-ID": "rid-1"}),
    ):
        assert response.json()["request_id"] == "rid-1"
        assert response.headers.get_list("x-request-id") == ["rid-1"]


def test_an_unexpected_error_is_a_500_problem_with_the_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(catalog, "list_rooms", fail)
    with TestClient(create_app(isolated_settings()), raise_server_exceptions=False) as test_client:
        response = test_client.get("/rooms", headers={"X-Request-ID": "rid-500"})
    assert assert_problem(response, 500, "INTERNAL_ERROR")["request_id"] == "rid-500"
    assert response.headers["x-request-id"] == "rid-500"


def test_each_request_is_one_json_access_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(caplog.handler)
    try:
        room = make_room(client)
        client.get(f"/rooms/{room}", headers={"X-Request-ID": "log-1"})
    finally:
        logger.removeHandler(caplog.handler)
    line = json.loads(caplog.records[-1].getMessage())
    assert line.pop("duration_ms") >= 0
    assert line == {
        "method": "GET",
        "path": f"/rooms/{room}",
        "route": "/rooms/{room_id}",
        "status": 200,
        "request_id": "log-1",
        "client": "testclient",
    }


def test_access_log_false_writes_no_lines(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(caplog.handler)
    try:
        with TestClient(create_app(isolated_settings(access_log=False))) as test_client:
            test_client.get("/rooms")
    finally:
        logger.removeHandler(caplog.handler)
    assert [r for r in caplog.records if r.name == ACCESS_LOGGER] == []
