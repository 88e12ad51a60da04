"""Tokens that can be taken back, and secrets an operator can trust: listing, revoking and logging out
(refused within a second on every worker), expiry, the admin token stored hashed, what start-up prints
and seeds."""

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from freezegun import freeze_time
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

import auth
from config import Settings
from db import ALEMBIC_INI, Database, normalise_url
from main import create_app
from models import ApiToken, ServiceSecret, User
from tests.conftest import POSTGRES_URL, empty_postgres
from tests.factories import (
    ADMIN,
    ADMIN_TOKEN,
    UNKNOWN,
    assert_problem,
    bearer,
    isolated_settings,
    make_user,
    parse_time,
)
from tokens import hash_token

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
REVOCATION_BOUND_SECONDS = 1.0  # the promise: a revoked token is refused everywhere within a second


@pytest.fixture
def shared_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database two apps (two workers, or two hosts) can share: a SQLite file, or PostgreSQL."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    empty_postgres(request.getfixturevalue("postgres_engine"))
    return POSTGRES_URL


@pytest.fixture
def two_apps(shared_url: str) -> Iterator[tuple[TestClient, TestClient]]:
    settings = isolated_settings(database_url=shared_url)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        yield first, second


def _me(client: TestClient, token: str) -> int:
    return client.get("/users/me", headers=bearer(token)).status_code


def _issue(client: TestClient, user_id: str) -> str:
    response = client.post(f"/users/{user_id}/token", headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def _token_ids(client: TestClient, token: str) -> list[str]:
    response = client.get("/users/me/tokens", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()]


# --- GET /users/me/tokens ----------------------------------------------------------------------------


def test_list_my_tokens_returns_ids_and_times_never_the_secret(client: TestClient) -> None:
    alice = make_user(client)
    second = _issue(client, alice.id)
    response = client.get("/users/me/tokens", headers=alice.auth)
    assert response.status_code == 200, response.text
    items = response.json()
    assert len(items) == 2
    assert all(set(item) == {"id", "created_date", "last_used_at", "expires_at", "current"} for item in items)
    assert [item["current"] for item in items] == [False, True]  # newest first: the admin-issued one
    assert all(item["expires_at"] is None for item in items)  # no TOKEN_TTL_DAYS: until revoked
    assert items[1]["last_used_at"] is not None  # this request used it
    for secret in (alice.token, second, hash_token(alice.token), hash_token(second)):
        assert secret not in response.text


def test_list_my_tokens_shows_only_the_callers_tokens(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    _issue(client, bob.id)
    assert len(_token_ids(client, alice.token)) == 1
    assert len(_token_ids(client, bob.token)) == 2
    assert not set(_token_ids(client, alice.token)) & set(_token_ids(client, bob.token))


def test_token_routes_refuse_a_missing_invalid_or_admin_token(client: TestClient) -> None:
    for method, path in (
        ("GET", "/users/me/tokens"),
        ("DELETE", f"/users/me/tokens/{UNKNOWN}"),
        ("POST", "/users/me/logout"),
    ):
        assert_problem(client.request(method, path), 401, "MISSING_TOKEN")
        assert_problem(client.request(method, path, headers=bearer("not-a-token")), 401, "INVALID_TOKEN")
        assert_problem(client.request(method, path, headers=ADMIN), 401, "INVALID_TOKEN")


# --- DELETE /users/me/tokens/{id} and POST /users/me/logout ---------------------------------------------


def test_revoke_my_token_returns_204_and_the_token_is_refused_at_once(client: TestClient) -> None:
    alice = make_user(client)
    spare = _issue(client, alice.id)
    assert _me(client, spare) == 200  # this worker now caches it
    (spare_id,) = [
        item["id"] for item in client.get("/users/me/tokens", headers=alice.auth).json() if not item["current"]
    ]
    response = client.delete(f"/users/me/tokens/{spare_id}", headers=alice.auth)
    assert response.status_code == 204 and response.content == b""
    assert_problem(client.get("/users/me", headers=bearer(spare)), 401, "INVALID_TOKEN")
    assert _me(client, alice.token) == 200  # the other token is untouched
    assert _token_ids(client, alice.token) != [] and spare_id not in _token_ids(client, alice.token)
    # Again: no change, still 204.
    assert client.delete(f"/users/me/tokens/{spare_id}", headers=alice.auth).status_code == 204


def test_revoke_another_users_token_returns_404_and_changes_nothing(client: TestClient) -> None:
    alice, bob = make_user(client), make_user(client)
    (bob_token_id,) = _token_ids(client, bob.token)
    assert_problem(client.delete(f"/users/me/tokens/{bob_token_id}", headers=alice.auth), 404, "TOKEN_NOT_FOUND")
    assert_problem(client.delete(f"/users/me/tokens/{UNKNOWN}", headers=alice.auth), 404, "TOKEN_NOT_FOUND")
    assert_problem(client.delete("/users/me/tokens/nope", headers=alice.auth), 422, "VALIDATION_ERROR")
    assert _me(client, bob.token) == 200


def test_logout_revokes_only_the_presenting_token(client: TestClient) -> None:
    alice = make_user(client)
    spare = _issue(client, alice.id)
    response = client.post("/users/me/logout", headers=alice.auth)
    assert response.status_code == 204 and response.content == b""
    assert_problem(client.get("/users/me", headers=alice.auth), 401, "INVALID_TOKEN")
    assert_problem(client.post("/users/me/logout", headers=alice.auth), 401, "INVALID_TOKEN")
    assert _me(client, spare) == 200


def test_a_revoked_token_can_no_longer_act(client: TestClient) -> None:
    # A leaked token, revoked: nothing it is presented to accepts it.
    alice = make_user(client)
    leaked = _issue(client, alice.id)
    assert client.get("/holds", headers=bearer(leaked)).status_code == 200
    leaked_id = next(
        item["id"] for item in client.get("/users/me/tokens", headers=bearer(leaked)).json() if item["current"]
    )
    assert client.delete(f"/users/me/tokens/{leaked_id}", headers=alice.auth).status_code == 204
    assert_problem(client.get("/holds", headers=bearer(leaked)), 401, "INVALID_TOKEN")
    assert_problem(client.get("/users/me/tokens", headers=bearer(leaked)), 401, "INVALID_TOKEN")
    assert_problem(client.get("/slots", headers=bearer(leaked)), 401, "INVALID_TOKEN")
    assert_problem(
        client.post("/rooms", json={"name": "X", "capacity": 1}, headers=bearer(leaked)), 401, "INVALID_TOKEN"
    )


@pytest.mark.parametrize("how", ["delete", "logout"])
def test_a_revoked_token_is_refused_on_another_worker_within_a_second(
    two_apps: tuple[TestClient, TestClient], how: str
) -> None:
    first, second = two_apps
    alice = make_user(first)
    spare = _issue(first, alice.id)
    assert _me(second, spare) == 200  # the second worker has it cached now
    if how == "delete":
        spare_id = next(i["id"] for i in first.get("/users/me/tokens", headers=bearer(spare)).json() if i["current"])
        response = first.delete(f"/users/me/tokens/{spare_id}", headers=alice.auth)
    else:
        response = first.post("/users/me/logout", headers=bearer(spare))
    answered = time.monotonic()
    assert response.status_code == 204
    time.sleep(max(0.0, answered + REVOCATION_BOUND_SECONDS - time.monotonic()))
    assert_problem(second.get("/users/me", headers=bearer(spare)), 401, "INVALID_TOKEN")
    assert _me(second, alice.token) == 200  # only the revoked token is refused


# --- TOKEN_TTL_DAYS -----------------------------------------------------------------------------------


def test_tokens_expire_after_token_ttl_days(database_url: str) -> None:
    with (
        freeze_time(NOW) as frozen,
        TestClient(create_app(isolated_settings(database_url=database_url, token_ttl_days=2))) as client,
    ):
        alice = make_user(client)
        issued = _issue(client, alice.id)
        (item, _) = client.get("/users/me/tokens", headers=bearer(issued)).json()
        assert parse_time(item["expires_at"]) == NOW + timedelta(days=2)
        frozen.tick(timedelta(days=2) - timedelta(seconds=1))
        assert _me(client, alice.token) == 200 and _me(client, issued) == 200
        frozen.tick(timedelta(seconds=1))
        assert_problem(client.get("/users/me", headers=alice.auth), 401, "INVALID_TOKEN")
        assert_problem(client.get("/users/me", headers=bearer(issued)), 401, "INVALID_TOKEN")


def test_without_token_ttl_days_tokens_do_not_expire(client: TestClient) -> None:
    with freeze_time(NOW) as frozen:
        alice = make_user(client)
        frozen.tick(timedelta(days=3650))
        assert _me(client, alice.token) == 200


def test_last_used_is_shown_to_the_minute(client: TestClient) -> None:
    with freeze_time(NOW) as frozen:
        alice = make_user(client)
        (item,) = client.get("/users/me/tokens", headers=alice.auth).json()
        assert parse_time(item["last_used_at"]) == NOW
        frozen.tick(30)  # the cache entry is stale by now (freezegun moves the monotonic clock too)
        (item,) = client.get("/users/me/tokens", headers=alice.auth).json()
        assert parse_time(item["last_used_at"]) == NOW  # not rewritten within the minute
        frozen.tick(31)
        (item,) = client.get("/users/me/tokens", headers=alice.auth).json()
        assert parse_time(item["last_used_at"]) == NOW + timedelta(seconds=61)


# --- the admin token ----------------------------------------------------------------------------------


def _admin_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if "admin token:" in line]
    return line.split("admin token: ", 1)[1]


def test_a_generated_admin_token_is_stored_hashed_and_printed_once(
    shared_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = isolated_settings(database_url=shared_url, admin_token=None)
    with TestClient(create_app(settings)) as first:
        token = _admin_line(capsys.readouterr().out).split(" ", 1)[0]
        assert len(token) >= 16
        assert first.post("/rooms", json={"name": "R", "capacity": 1}, headers=bearer(token)).status_code == 201
        with TestClient(create_app(settings)) as second:  # another worker, or a restart
            output = capsys.readouterr().out
            assert token not in output
            assert "not shown again" in _admin_line(output) and auth.ROTATE_COMMAND in output
            assert second.post("/rooms", json={"name": "S", "capacity": 1}, headers=bearer(token)).status_code == 201
            assert_problem(
                second.post("/rooms", json={"name": "T", "capacity": 1}, headers=bearer(token + "x")),
                401,
                "INVALID_TOKEN",
            )
    engine = create_engine(normalise_url(shared_url))
    with engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(text("SELECT name, value FROM service_secrets"))]
    engine.dispose()
    assert stored == [(auth.ADMIN_SECRET, hash_token(token))]


def test_rotating_the_admin_token_replaces_it_after_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/rotate.db"
    settings = isolated_settings(database_url=url, admin_token=None)
    with TestClient(create_app(settings)):
        old = _admin_line(capsys.readouterr().out).split(" ", 1)[0]
    monkeypatch.setattr(auth, "get_settings", lambda: settings)
    assert auth.main(["rotate-admin-token"]) == 0
    new = capsys.readouterr().out.rsplit(": ", 1)[1].strip()
    with TestClient(create_app(settings)) as client:
        assert new not in capsys.readouterr().out
        assert client.post("/rooms", json={"name": "R", "capacity": 1}, headers=bearer(new)).status_code == 201
        assert_problem(
            client.post("/rooms", json={"name": "S", "capacity": 1}, headers=bearer(old)), 401, "INVALID_TOKEN"
        )


def test_rotating_refuses_when_admin_token_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "get_settings", lambda: isolated_settings())
    assert auth.main(["rotate-admin-token"]) == 1
    assert auth.main([]) == 2


@pytest.mark.parametrize("url", ["memory", "file"])
def test_start_up_never_prints_an_admin_token_from_the_environment(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = "sqlite:///:memory:" if url == "memory" else f"sqlite:///{tmp_path}/env.db"
    settings = isolated_settings(database_url=database_url, seed_demo_data=True)
    with TestClient(create_app(settings)), TestClient(create_app(settings)):
        pass
    output = capsys.readouterr().out
    assert ADMIN_TOKEN not in output
    assert output.count("admin token: from ADMIN_TOKEN") == 2


def test_the_admin_token_is_compared_by_hash_in_constant_time(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth.secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.secrets, "compare_digest", spy)
    assert client.post("/rooms", json={"name": "R", "capacity": 1}, headers=ADMIN).status_code == 201
    assert compared == [(hash_token(ADMIN_TOKEN).encode(), hash_token(ADMIN_TOKEN).encode())]


# --- demo data ----------------------------------------------------------------------------------------


def _demo_tokens(output: str) -> dict[str, str]:
    return dict(re.findall(r"demo user (\w+) \(.*?\) token: (\S+)", output))


def test_the_in_memory_default_seeds_demo_data_and_prints_working_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(admin_token=ADMIN_TOKEN)  # seed_demo_data left unset
    with TestClient(create_app(settings)) as client:
        tokens = _demo_tokens(capsys.readouterr().out)
        assert set(tokens) == {"alice", "bob"}
        assert client.get("/users/me", headers=bearer(tokens["alice"])).json()["handle"] == "alice"
        assert len(client.get("/rooms").json()) == 3


def test_a_file_database_is_not_seeded_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(admin_token=ADMIN_TOKEN, database_url=f"sqlite:///{tmp_path}/plain.db")
    with TestClient(create_app(settings)) as client:
        assert "demo" not in capsys.readouterr().out
        assert client.get("/rooms").json() == []


def test_seeding_a_persistent_database_mints_demo_tokens_once(
    shared_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = isolated_settings(database_url=shared_url, seed_demo_data=True, token_ttl_days=7)
    with TestClient(create_app(settings)) as client:
        tokens = _demo_tokens(capsys.readouterr().out)
        assert set(tokens) == {"alice", "bob"}
        (item,) = client.get("/users/me/tokens", headers=bearer(tokens["alice"])).json()
        assert item["expires_at"] is not None  # demo tokens follow TOKEN_TTL_DAYS like any other
    for _ in range(2):  # restarts
        with TestClient(create_app(settings)) as client:
            output = capsys.readouterr().out
            assert _demo_tokens(output) == {} and "demo data already seeded" in output
            assert _me(client, tokens["bob"]) == 200
    db = Database(settings)
    with Session(db.engine) as session:
        assert len(session.scalars(select(ApiToken)).all()) == 2
        assert len(session.scalars(select(User)).all()) == 2
    db.dispose()


# --- migration 0005 -----------------------------------------------------------------------------------


def test_migration_0005_keeps_a_stored_plain_admin_token_working_as_its_hash_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    engine = create_engine(url)
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        conn.execute(
            text(
                "INSERT INTO service_secrets (id, name, value, created_date, last_updated_date)"
                " VALUES ('00000000000000000000000000000001', 'admin_token', 'old-plain-admin-token',"
                " '2030-01-01', '2030-01-01')"
            )
        )
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    with Session(engine) as session:
        rows = session.execute(select(ServiceSecret.name, ServiceSecret.value)).all()
    assert [tuple(row) for row in rows] == [(auth.ADMIN_SECRET, hash_token("old-plain-admin-token"))]
    engine.dispose()
    settings = isolated_settings(database_url=url, admin_token=None)
    with TestClient(create_app(settings)) as client:
        response = client.post("/rooms", json={"name": "R", "capacity": 1}, headers=bearer("old-plain-admin-token"))
        assert response.status_code == 201


def test_downgrading_0005_deletes_tokens_that_would_otherwise_work_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/down.db"
    with TestClient(create_app(isolated_settings(database_url=url))) as client:
        alice, bob = make_user(client), make_user(client)
        assert client.post("/users/me/logout", headers=alice.auth).status_code == 204
    engine = create_engine(url)
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with engine.connect() as conn:
        remaining = conn.execute(text("SELECT token_hash FROM api_tokens")).scalars().all()
    engine.dispose()
    assert remaining == [hash_token(bob.token)]
