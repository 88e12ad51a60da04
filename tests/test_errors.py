"""One error format for every failure, bad requests that change nothing, the errors the OpenAPI document lists,
and which error a request with several faults gets."""

import pytest
from fastapi.testclient import TestClient

from tests.factories import (
    ADMIN,
    BAD_TOKEN,
    UNKNOWN,
    ApiUser,
    assert_problem,
    make_hold,
    make_room,
    make_slot,
    make_user,
)

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def alice(client: TestClient) -> ApiUser:
    return make_user(client)


def _raw(client: TestClient, method: str, url: str, body: bytes, headers: dict | None = None):
    return client.request(method, url, content=body, headers={**JSON, **(headers or {})})


# --- malformed bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b'{"slot_id": }', b"{'slot_id': 'x'}", b'{"slot_id": "a",}', b"nul"])
def test_malformed_json_on_create_hold_returns_422_malformed_json(
    client: TestClient, alice: ApiUser, body: bytes
) -> None:
    assert_problem(_raw(client, "POST", "/holds", body, alice.auth), 422, "MALFORMED_JSON")


@pytest.mark.parametrize(
    ("path", "admin"),
    [("/users", False), ("/rooms", True), ("/rooms/{room}/slots", True), ("/holds/{hold}/confirm", False)],
)
def test_malformed_json_on_every_body_route_returns_422_malformed_json(
    client: TestClient, alice: ApiUser, path: str, admin: bool
) -> None:
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    url = path.format(room=make_room(client), hold=hold)
    assert_problem(_raw(client, "POST", url, b'{"name": ', ADMIN if admin else alice.auth), 422, "MALFORMED_JSON")


def test_body_with_invalid_utf8_returns_422_malformed_json(client: TestClient, alice: ApiUser) -> None:
    assert_problem(_raw(client, "POST", "/holds", b'{"slot_id": "\xff\xfe"}', alice.auth), 422, "MALFORMED_JSON")


@pytest.mark.parametrize(
    "body",
    [
        {"slot_id": 42},
        {"slot_id": ["a"]},
        {"slot_id": "not-a-uuid"},
        {"slot_id": None},
        {"slot_id": UNKNOWN, "user_id": 7},
        {},
    ],
)
def test_wrong_field_types_on_create_hold_return_422_validation_error(
    client: TestClient, alice: ApiUser, body: dict
) -> None:
    assert_problem(client.post("/holds", json=body, headers=alice.auth), 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("body", [b"[]", b'"slot"', b"42", b"null"])
def test_json_body_that_is_not_an_object_returns_422(client: TestClient, alice: ApiUser, body: bytes) -> None:
    assert_problem(_raw(client, "POST", "/holds", body, alice.auth), 422, "VALIDATION_ERROR")


def test_unknown_extra_field_returns_422(client: TestClient, alice: ApiUser) -> None:
    slot = make_slot(client)
    response = client.post("/holds", json={"slot_id": slot, "status": "CONFIRMED"}, headers=alice.auth)
    body = assert_problem(response, 422, "VALIDATION_ERROR")
    assert any(error["loc"][-1] == "status" for error in body["errors"])
    assert client.get(f"/slots/{slot}").json()["status"] == "AVAILABLE"
    hold = make_hold(client, alice, slot)["hold_id"]
    response = client.post(f"/holds/{hold}/confirm", json={"confirmed_at": "2030-01-01T00:00:00Z"}, headers=alice.auth)
    assert_problem(response, 422, "VALIDATION_ERROR")


def test_validation_error_lists_each_bad_field(client: TestClient) -> None:
    body = assert_problem(
        client.post("/rooms", json={"name": "", "capacity": 0}, headers=ADMIN), 422, "VALIDATION_ERROR"
    )
    assert {tuple(error["loc"]) for error in body["errors"]} == {("body", "name"), ("body", "capacity")}


# --- ids, routes and methods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "admin"),
    [
        ("GET", "/rooms/{bad}", False),
        ("POST", "/rooms/{bad}/slots", True),
        ("GET", "/slots/{bad}", False),
        ("DELETE", "/slots/{bad}", True),
        ("GET", "/holds/{bad}", False),
        ("POST", "/holds/{bad}/confirm", False),
        ("POST", "/holds/{bad}/release", False),
        ("POST", "/holds/{bad}/extend", False),
        ("POST", "/holds/{bad}/cancel", False),
        ("POST", "/users/{bad}/token", True),
    ],
)
@pytest.mark.parametrize("bad", ["42", "not-a-uuid", "0" * 33])
def test_non_uuid_path_id_returns_422(
    client: TestClient, alice: ApiUser, method: str, path: str, admin: bool, bad: str
) -> None:
    body = {"start_time": "2030-01-02T10:00:00Z", "end_time": "2030-01-02T11:00:00Z"} if "slots" in path else None
    response = client.request(method, path.format(bad=bad), headers=ADMIN if admin else alice.auth, json=body)
    assert_problem(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize("path", ["/nope", "/holds/x/y/z", "/bookings", "/rooms/a/b"])
def test_unknown_route_returns_404_not_found(client: TestClient, path: str) -> None:
    assert_problem(client.get(path), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path"), [("DELETE", "/health"), ("PUT", "/holds"), ("PATCH", "/rooms"), ("GET", "/holds/{id}/confirm")]
)
def test_wrong_method_returns_405(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path.format(id=UNKNOWN))
    assert_problem(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"]


def test_unauthenticated_errors_carry_www_authenticate(client: TestClient) -> None:
    response = client.post("/holds", json={"slot_id": UNKNOWN})
    assert_problem(response, 401, "MISSING_TOKEN")
    assert response.headers["www-authenticate"] == "Bearer"


def test_every_error_kind_has_the_problem_shape(client: TestClient, alice: ApiUser) -> None:
    bob = make_user(client)
    hold = make_hold(client, alice, make_slot(client))["hold_id"]
    cases = [
        (client.get("/users/me"), 401, "MISSING_TOKEN"),
        (client.post("/rooms", json={"name": "R", "capacity": 1}, headers=alice.auth), 403, "ADMIN_REQUIRED"),
        (client.get(f"/holds/{hold}", headers=bob.auth), 403, "NOT_HOLD_OWNER"),
        (client.get(f"/slots/{UNKNOWN}"), 404, "SLOT_NOT_FOUND"),
        (client.post("/holds", json={"slot_id": make_slot(client)}, headers=bob.auth), 201, None),
        (client.post(f"/holds/{hold}/cancel", headers=alice.auth), 409, "HOLD_NOT_CONFIRMED"),
        (client.post("/users", json={"name": "A", "handle": alice.handle}), 409, "HANDLE_TAKEN"),
        (client.get("/slots", params={"limit": 0}), 422, "VALIDATION_ERROR"),
    ]
    for response, status, code in cases:
        if code is None:
            assert response.status_code == status
            continue
        body = assert_problem(response, status, code)
        assert isinstance(body["type"], str) and body["type"]
        assert isinstance(body["title"], str) and body["title"]
        assert isinstance(body["detail"], str) and body["detail"]


# --- a bad request loses nothing already stored ------------------------------------------------------


def test_bad_requests_leave_existing_hold_and_booking_intact(client: TestClient, alice: ApiUser) -> None:
    bob = make_user(client)
    held_slot, booked_slot = make_slot(client), make_slot(client)
    hold = make_hold(client, alice, held_slot)
    booking = make_hold(client, alice, booked_slot)
    assert client.post(f"/holds/{booking['hold_id']}/confirm", headers=alice.auth).status_code == 200
    before = {h: client.get(f"/holds/{h}", headers=alice.auth).json() for h in (hold["hold_id"], booking["hold_id"])}

    for hold_id in before:
        for action in ("confirm", "release", "extend", "cancel"):
            url = f"/holds/{hold_id}/{action}"
            assert _raw(client, "POST", url, b'{"user_id": ', alice.auth).status_code == 422
            assert client.post(url, json={"user_id": "nope"}, headers=alice.auth).status_code == 422
            assert client.post(url, json={"extra": True}, headers=alice.auth).status_code == 422
            assert client.post(url, json={"user_id": bob.id}, headers=alice.auth).status_code == 403
            assert client.post(url, headers=bob.auth).status_code == 403
            assert client.post(url).status_code == 401
    for slot in (held_slot, booked_slot):
        assert client.post("/holds", json={"slot_id": slot}, headers=bob.auth).status_code == 409
        assert _raw(client, "POST", "/holds", b"{", bob.auth).status_code == 422
        assert client.delete(f"/slots/{slot}", headers=ADMIN).status_code == 409

    after = {h: client.get(f"/holds/{h}", headers=alice.auth).json() for h in before}
    assert after == before
    assert after[hold["hold_id"]]["status"] == "HOLD" and after[booking["hold_id"]]["status"] == "CONFIRMED"
    assert client.get(f"/slots/{held_slot}", headers=alice.auth).json()["status"] == "HELD_BY_ME"
    assert client.get(f"/slots/{booked_slot}", headers=bob.auth).json()["status"] == "BOOKED"


# --- the OpenAPI document -----------------------------------------------------------------------


CONTRACT_ERRORS = {
    ("post", "/users"): {"409", "422"},
    ("get", "/users/me"): {"401"},
    ("post", "/users/{user_id}/token"): {"401", "403", "404", "422"},
    ("post", "/rooms"): {"401", "403", "409", "422"},
    ("get", "/rooms"): set(),
    ("get", "/rooms/{room_id}"): {"404", "422"},
    ("post", "/rooms/{room_id}/slots"): {"401", "403", "404", "409", "422"},
    ("get", "/slots"): {"401", "403", "404", "422"},
    ("get", "/slots/{slot_id}"): {"401", "403", "404", "422"},
    ("delete", "/slots/{slot_id}"): {"401", "403", "404", "409", "422"},
    ("post", "/holds"): {"401", "403", "404", "409", "422"},
    ("get", "/holds"): {"401", "422"},
    ("get", "/holds/{hold_id}"): {"401", "403", "404", "422"},
    ("post", "/holds/{hold_id}/confirm"): {"401", "403", "404", "410", "422"},
    ("post", "/holds/{hold_id}/release"): {"401", "403", "404", "409", "410", "422"},
    ("post", "/holds/{hold_id}/extend"): {"401", "403", "404", "409", "410", "422"},
    ("post", "/holds/{hold_id}/cancel"): {"401", "403", "404", "409", "422"},
    ("get", "/health"): set(),
}


def test_openapi_lists_every_contract_path_with_its_error_responses(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for (method, path), errors in CONTRACT_ERRORS.items():
        assert method in paths.get(path, {}), f"{method.upper()} {path} missing from OpenAPI"
        documented = set(paths[path][method]["responses"])
        assert errors <= documented, f"{method.upper()} {path} documents {sorted(documented)}"


def test_openapi_documents_error_responses_as_problem_json(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for (method, path), errors in CONTRACT_ERRORS.items():
        for status in errors:
            content = paths[path][method]["responses"][status]["content"]
            assert "application/problem+json" in content, f"{method.upper()} {path} {status}"


def test_openapi_problem_json_responses_carry_the_problem_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for (method, path), errors in CONTRACT_ERRORS.items():
        for status in errors:
            content = paths[path][method]["responses"][status]["content"]
            schema = content["application/problem+json"].get("schema", {})
            # The status's problem schema, `code` narrowed to the route's codes (tests/test_openapi.py).
            for variant in schema.get("oneOf", [schema]):
                assert variant["allOf"][0]["$ref"].endswith("Problem"), f"{method.upper()} {path} {status}"


# --- which error a request with several faults gets ---------------------------------------------


def test_authentication_comes_before_request_validation(client: TestClient) -> None:
    assert_problem(client.post("/holds", json={}), 401, "MISSING_TOKEN")
    assert_problem(client.post("/holds", json={}, headers=BAD_TOKEN), 401, "INVALID_TOKEN")
    assert_problem(client.get("/holds/not-a-uuid", headers=BAD_TOKEN), 401, "INVALID_TOKEN")
    assert_problem(client.get("/slots?limit=0", headers=BAD_TOKEN), 401, "INVALID_TOKEN")


def test_admin_rights_come_before_request_validation(client: TestClient, alice: ApiUser) -> None:
    # The first request looks alice's token up in the database, the later ones in the cache.
    for _ in range(2):
        assert_problem(client.post("/rooms", json={}, headers=alice.auth), 403, "ADMIN_REQUIRED")
        assert_problem(client.post(f"/rooms/{UNKNOWN}/slots", json={}, headers=alice.auth), 403, "ADMIN_REQUIRED")
        assert_problem(client.delete("/slots/not-a-uuid", headers=alice.auth), 403, "ADMIN_REQUIRED")
        assert_problem(client.post("/users/not-a-uuid/token", headers=BAD_TOKEN), 401, "INVALID_TOKEN")
