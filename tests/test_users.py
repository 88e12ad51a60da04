"""Users over HTTP: sign-up and handle rules, /users/me, admin-issued tokens, tokens across workers."""

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from main import create_app
from tests.factories import (
    ADMIN,
    BAD_TOKEN,
    UNKNOWN,
    assert_problem,
    bearer,
    isolated_settings,
    make_hold,
    make_slot,
    make_user,
)


def _register(client: TestClient, handle: object, **fields: object):
    return client.post("/users", json={"name": "Someone", "handle": handle, **fields})


# --- POST /users and GET /users/me -----------------------------------------------------------------


def test_register_returns_201_with_a_token_that_works_on_me(client: TestClient) -> None:
    response = _register(client, "alice", email="alice@example.com")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["handle"] == "alice" and body["name"] == "Someone" and body["email"] == "alice@example.com"
    assert uuid.UUID(body["id"]).version == 4
    assert body["created_date"] and body["last_updated_date"]
    me = client.get("/users/me", headers=bearer(body["token"]))
    assert me.status_code == 200
    assert me.json()["id"] == body["id"] and me.json()["handle"] == "alice"
    assert "token" not in me.json()  # the token is shown only at sign-up


def test_register_stores_the_handle_lowercase(client: TestClient) -> None:
    body = _register(client, "Alice_Smith42").json()
    assert body["handle"] == "alice_smith42"
    assert client.get("/users/me", headers=bearer(body["token"])).json()["handle"] == "alice_smith42"


@pytest.mark.parametrize("handle", ["a", "A", "_", "0", "a" * 32, "UPPER_lower_09"])
def test_register_accepts_valid_handles(client: TestClient, handle: str) -> None:
    response = _register(client, handle)
    assert response.status_code == 201, response.text
    assert response.json()["handle"] == handle.lower()


@pytest.mark.parametrize(
    "handle",
    ["", "   ", "a" * 33, "al ice", "al-ice", "alice.smith", "alice@home", "zoë", "ΑΛΙΚΗ", "名前", "ali\tce", None, 42],
)
def test_register_invalid_handle_returns_422(client: TestClient, handle: object) -> None:
    assert_problem(_register(client, handle), 422, "VALIDATION_ERROR")


def test_register_duplicate_handle_in_another_case_returns_409(client: TestClient) -> None:
    first = _register(client, "Alice")
    assert first.status_code == 201
    assert_problem(_register(client, "alice"), 409, "HANDLE_TAKEN")
    assert_problem(_register(client, "ALICE"), 409, "HANDLE_TAKEN")
    # The first user is untouched and still authenticates.
    me = client.get("/users/me", headers=bearer(first.json()["token"]))
    assert me.status_code == 200 and me.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.com", "a b@example.com", ""])
def test_register_invalid_email_returns_422(client: TestClient, email: str) -> None:
    assert_problem(_register(client, "alice", email=email), 422, "VALIDATION_ERROR")
    assert _register(client, "alice").status_code == 201  # nothing was stored by the failed attempt


def test_register_without_email_returns_201(client: TestClient) -> None:
    omitted = _register(client, "no_email")
    explicit_null = _register(client, "null_email", email=None)
    assert omitted.status_code == explicit_null.status_code == 201
    assert omitted.json()["email"] is None and explicit_null.json()["email"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"handle": "alice"},
        {"name": "", "handle": "alice"},
        {"name": "Alice", "handle": "alice", "role": "admin"},
        {"name": "Alice", "handle": "alice", "id": str(uuid.uuid4())},
    ],
)
def test_register_missing_name_or_extra_field_returns_422(client: TestClient, body: dict) -> None:
    assert_problem(client.post("/users", json=body), 422, "VALIDATION_ERROR")


def test_me_without_a_valid_user_token_returns_401(client: TestClient) -> None:
    assert_problem(client.get("/users/me"), 401, "MISSING_TOKEN")
    assert_problem(client.get("/users/me", headers=BAD_TOKEN), 401, "INVALID_TOKEN")
    assert_problem(client.get("/users/me", headers=ADMIN), 401, "INVALID_TOKEN")
    assert_problem(client.get("/users/me", headers={"Authorization": "Basic abc"}), 401, "MISSING_TOKEN")


@pytest.mark.parametrize("header", ["Bearer {token}", "bearer {token}", "BEARER  {token} "])
def test_the_bearer_scheme_is_read_in_any_case_and_the_token_trimmed(client: TestClient, header: str) -> None:
    alice = make_user(client)
    me = client.get("/users/me", headers={"Authorization": header.format(token=alice.token)})
    assert me.status_code == 200 and me.json()["id"] == alice.id


@pytest.mark.parametrize("value", ["", "Basic abc", "Token abc", "Bearer", "Bearer ", "Bearer   "])
def test_an_authorization_header_without_a_bearer_token_counts_as_none(client: TestClient, value: str) -> None:
    headers = {"Authorization": value}
    assert_problem(client.get("/users/me", headers=headers), 401, "MISSING_TOKEN")
    assert_problem(client.post("/rooms", json={"name": "Room"}, headers=headers), 401, "MISSING_TOKEN")
    assert client.get("/slots", headers=headers).status_code == 200  # served as to an anonymous caller


# --- POST /users/{id}/token ---------------------------------------------------------------------


def test_admin_issues_a_new_token_and_the_old_one_still_works(client: TestClient) -> None:
    alice = make_user(client)
    response = client.post(f"/users/{alice.id}/token", headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user_id"] == alice.id and body["token"] != alice.token
    for token in (body["token"], alice.token):
        me = client.get("/users/me", headers=bearer(token))
        assert me.status_code == 200 and me.json()["id"] == alice.id


def test_token_issued_by_admin_acts_as_the_user(client: TestClient) -> None:
    alice = make_user(client)
    token = client.post(f"/users/{alice.id}/token", headers=ADMIN).json()["token"]
    slot = make_slot(client)
    response = client.post("/holds", json={"slot_id": slot, "user_id": alice.id}, headers=bearer(token))
    assert response.status_code == 201 and response.json()["user_id"] == alice.id
    assert client.get(f"/holds/{response.json()['hold_id']}", headers=alice.auth).status_code == 200


def test_issue_token_with_a_user_token_returns_403(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    assert_problem(client.post(f"/users/{bob.id}/token", headers=alice.auth), 403, "ADMIN_REQUIRED")
    assert_problem(client.post(f"/users/{alice.id}/token", headers=alice.auth), 403, "ADMIN_REQUIRED")


def test_issue_token_without_a_valid_token_returns_401(client: TestClient) -> None:
    alice = make_user(client)
    assert_problem(client.post(f"/users/{alice.id}/token"), 401, "MISSING_TOKEN")
    assert_problem(client.post(f"/users/{alice.id}/token", headers=BAD_TOKEN), 401, "INVALID_TOKEN")


def test_issue_token_for_unknown_user_returns_404(client: TestClient) -> None:
    assert_problem(client.post(f"/users/{UNKNOWN}/token", headers=ADMIN), 404, "USER_NOT_FOUND")
    assert_problem(client.post("/users/alice/token", headers=ADMIN), 422, "VALIDATION_ERROR")


# --- tokens across worker processes ------------------------------------------------------------


def test_tokens_work_across_two_apps_on_the_same_sqlite_file(tmp_path: Path) -> None:
    settings = isolated_settings(database_url=f"sqlite:///{tmp_path}/x.db")
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        alice = make_user(first)
        me = second.get("/users/me", headers=alice.auth)
        assert me.status_code == 200 and me.json()["id"] == alice.id

        # A token issued on the second worker works on the first, and acts on data of both.
        token = second.post(f"/users/{alice.id}/token", headers=ADMIN).json()["token"]
        assert first.get("/users/me", headers=bearer(token)).json()["id"] == alice.id
        slot = make_slot(first)
        hold = make_hold(second, alice, slot)
        assert first.get(f"/holds/{hold['hold_id']}", headers=bearer(token)).json()["status"] == "HOLD"

        # The handle is taken on both workers.
        assert_problem(second.post("/users", json={"name": "A", "handle": alice.handle.upper()}), 409, "HANDLE_TAKEN")
