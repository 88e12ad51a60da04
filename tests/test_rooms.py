"""Rooms over HTTP: admin creation, unique names whatever their case, listing and lookup."""

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.factories import ADMIN, BAD_TOKEN, UNKNOWN, assert_problem, make_room, make_user


def _create(client: TestClient, name: object, capacity: object = 4, headers: dict | None = ADMIN):
    return client.post("/rooms", json={"name": name, "capacity": capacity}, headers=headers)


def test_create_room_returns_201(client: TestClient) -> None:
    response = _create(client, "Pharaoh's Tomb", 6)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Pharaoh's Tomb" and body["capacity"] == 6
    assert uuid.UUID(body["id"]).version == 4
    assert body["created_date"] and body["last_updated_date"]


@pytest.mark.parametrize(("first", "second"), [("Haunted Library", "haunted library"), ("Space", "SPACE")])
def test_create_room_with_taken_name_in_another_case_returns_409(client: TestClient, first: str, second: str) -> None:
    assert _create(client, first).status_code == 201
    assert_problem(_create(client, second), 409, "ROOM_NAME_TAKEN")
    assert [room["name"] for room in client.get("/rooms").json()] == [first]


def test_create_room_with_taken_non_ascii_name_in_another_case_returns_409(client: TestClient) -> None:
    assert _create(client, "Salle Été").status_code == 201
    assert_problem(_create(client, "SALLE ÉTÉ"), 409, "ROOM_NAME_TAKEN")


@pytest.mark.parametrize("capacity", [0, -1, "four", None, 1.5])
def test_create_room_with_invalid_capacity_returns_422(client: TestClient, capacity: object) -> None:
    assert_problem(_create(client, "Room", capacity), 422, "VALIDATION_ERROR")
    assert client.get("/rooms").json() == []


@pytest.mark.parametrize("name", ["", None, 7, "x" * 201])
def test_create_room_with_invalid_name_returns_422(client: TestClient, name: object) -> None:
    assert_problem(_create(client, name), 422, "VALIDATION_ERROR")


def test_create_room_with_unknown_field_returns_422(client: TestClient) -> None:
    response = client.post("/rooms", json={"name": "Room", "capacity": 2, "floor": 3}, headers=ADMIN)
    assert_problem(response, 422, "VALIDATION_ERROR")


def test_create_room_without_the_admin_token_returns_403_or_401(client: TestClient) -> None:
    alice = make_user(client)
    assert_problem(_create(client, "Room", headers=alice.auth), 403, "ADMIN_REQUIRED")
    assert_problem(_create(client, "Room", headers=None), 401, "MISSING_TOKEN")
    assert_problem(_create(client, "Room", headers=BAD_TOKEN), 401, "INVALID_TOKEN")
    assert client.get("/rooms").json() == []


def test_list_rooms_returns_every_room_by_name(client: TestClient) -> None:
    assert client.get("/rooms").json() == []
    ids = {name: make_room(client, name) for name in ("Space Station", "Haunted Library", "Pharaoh's Tomb")}
    response = client.get("/rooms")
    assert response.status_code == 200
    assert [(room["id"], room["name"]) for room in response.json()] == sorted(
        ((room_id, name) for name, room_id in ids.items()), key=lambda pair: pair[1]
    )


def test_get_room_returns_the_room(client: TestClient) -> None:
    room = make_room(client, "Observatory", capacity=3)
    response = client.get(f"/rooms/{room}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == room and body["name"] == "Observatory" and body["capacity"] == 3


def test_get_unknown_room_returns_404(client: TestClient) -> None:
    assert_problem(client.get(f"/rooms/{UNKNOWN}"), 404, "ROOM_NOT_FOUND")


@pytest.mark.parametrize("room_id", ["room-1", "1", "00000000-0000-0000-0000-00000000000g"])
def test_get_room_with_non_uuid_id_returns_422(client: TestClient, room_id: str) -> None:
    assert_problem(client.get(f"/rooms/{room_id}"), 422, "VALIDATION_ERROR")
