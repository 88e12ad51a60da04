"""A front-end's Python client, generated from /openapi.json by openapi-python-client and used unedited.

Generated into a temporary directory, imported, and driven through the whole hold flow against a
real server: anonymous listing, hold, extend, confirm twice, cancel, and a competing user's typed 409.
"""

import importlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2 as httpx
import pytest

from tests.factories import ADMIN_TOKEN
from tests.server import running_server

pytestmark = pytest.mark.slow

SERVER_ENV = {"ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false", "DATABASE_URL": "sqlite:///:memory:"}
PACKAGE = "booking_client"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(SERVER_ENV) as url:
        yield url


@pytest.fixture(scope="module")
def client_package(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client generated from the running server's own /openapi.json."""
    tmp = tmp_path_factory.mktemp("generated")
    spec = tmp / "openapi.json"
    spec.write_text(json.dumps(httpx.get(f"{server}/openapi.json").raise_for_status().json()))
    bin_dir = str(Path(sys.executable).parent)  # the generator, and ruff for its formatting step
    result = subprocess.run(
        [
            "openapi-python-client",
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(tmp / PACKAGE),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    # Any warning would mean part of the document was not understood and left out of the client.
    assert result.returncode == 0 and "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(tmp))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


@pytest.fixture
def clients() -> Iterator[ExitStack]:
    """Closes every generated client the test opens (each holds an HTTP connection pool)."""
    with ExitStack() as stack:
        yield stack


def test_generated_client_runs_the_whole_hold_flow(server: str, client_package: ModuleType, clients: ExitStack) -> None:
    api, models = "api", _module("models")
    users = _module(f"{api}.users.register_user")
    me = _module(f"{api}.users.get_current_user")
    new_token = _module(f"{api}.users.issue_user_token")
    create_room = _module(f"{api}.rooms.create_room")
    list_rooms = _module(f"{api}.rooms.list_rooms")
    get_room = _module(f"{api}.rooms.get_room")
    create_slot = _module(f"{api}.rooms.create_slot")
    list_slots = _module(f"{api}.slots.list_slots")
    get_slot = _module(f"{api}.slots.get_slot")
    delete_slot = _module(f"{api}.slots.delete_slot")
    holds = {name: _module(f"{api}.holds.{name}") for name in ("create_hold", "extend_hold", "confirm_hold")}
    holds.update({name: _module(f"{api}.holds.{name}") for name in ("cancel_hold", "get_hold", "list_holds")})
    history = _module(f"{api}.holds.get_hold_history")
    health = _module(f"{api}.health.get_health")
    stats = _module(f"{api}.health.get_stats")

    anonymous = clients.enter_context(client_package.Client(base_url=server))
    admin = clients.enter_context(client_package.AuthenticatedClient(base_url=server, token=ADMIN_TOKEN))

    # Admin: a room and two slots tomorrow.
    room = create_room.sync(client=admin, body=models.RoomCreate(name=f"Room {uuid.uuid4().hex[:8]}", capacity=4))
    assert isinstance(room, models.RoomRead)
    assert isinstance(get_room.sync(room.id, client=anonymous), models.RoomRead)
    assert any(r.id == room.id for r in list_rooms.sync(client=anonymous))
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    slots = [
        create_slot.sync(
            room.id,
            client=admin,
            body=models.SlotCreate(start_time=start + timedelta(hours=i), end_time=start + timedelta(hours=i + 1)),
        )
        for i in range(2)
    ]
    assert all(isinstance(slot, models.SlotRead) for slot in slots)
    overlap = create_slot.sync(
        room.id, client=admin, body=models.SlotCreate(start_time=start, end_time=slots[0].end_time)
    )
    assert isinstance(overlap, models.CreateSlotSlotOverlapProblem)
    assert overlap.code == models.CreateSlotSlotOverlapProblemCode.SLOT_OVERLAP
    assert overlap.overlapping_slot_id == slots[0].id

    # Two users sign up; a third token for alice from the admin.
    alice_user = users.sync(client=anonymous, body=models.UserCreate(name="Alice", handle=f"a_{uuid.uuid4().hex[:12]}"))
    bob_user = users.sync(client=anonymous, body=models.UserCreate(name="Bob", handle=f"b_{uuid.uuid4().hex[:12]}"))
    assert isinstance(alice_user, models.UserWithToken) and isinstance(bob_user, models.UserWithToken)
    alice = clients.enter_context(client_package.AuthenticatedClient(base_url=server, token=alice_user.token))
    bob = clients.enter_context(client_package.AuthenticatedClient(base_url=server, token=bob_user.token))
    assert me.sync(client=alice).id == alice_user.id
    assert isinstance(new_token.sync(alice_user.id, client=admin), models.TokenRead)
    unauthorized = me.sync(
        client=clients.enter_context(client_package.AuthenticatedClient(base_url=server, token="not-a-token"))
    )
    assert unauthorized.code == models.GetCurrentUserUnauthorizedProblemCode.INVALID_TOKEN

    # Anonymous listing. (openapi-python-client 0.29 types optional-auth operations as needing an
    # AuthenticatedClient, issue #1372; the call itself works with the plain client.)
    page = list_slots.sync(client=anonymous, room_id=room.id)
    assert [slot.status for slot in page.items] == [models.SlotStatus.AVAILABLE] * 2

    # Alice holds and extends (no body: the optional body stays unset).
    hold = holds["create_hold"].sync(client=alice, body=models.HoldCreate(slot_id=slots[0].id))
    assert isinstance(hold, models.HoldRead) and hold.status == models.HoldStatus.HOLD
    extended = holds["extend_hold"].sync(hold.hold_id, client=alice)
    assert isinstance(extended, models.HoldRead) and extended.extensions_used == 1

    # Bob competes: a typed 409 with the slot's state.
    refused = holds["create_hold"].sync(client=bob, body=models.HoldCreate(slot_id=slots[0].id))
    assert isinstance(refused, models.CreateHoldSlotUnavailableProblem)
    assert refused.code == models.CreateHoldSlotUnavailableProblemCode.SLOT_UNAVAILABLE
    assert refused.slot_status == models.SlotStatus.HELD_BY_OTHER
    assert refused.held_until == extended.expires_at
    assert get_slot.sync(slots[0].id, client=bob).status == models.SlotStatus.HELD_BY_OTHER

    # Confirm twice: the same booking.
    first = holds["confirm_hold"].sync(hold.hold_id, client=alice)
    again = holds["confirm_hold"].sync(hold.hold_id, client=alice)
    assert isinstance(first, models.HoldRead) and first.status == models.HoldStatus.CONFIRMED
    assert isinstance(again, models.HoldRead) and again.confirmed_at == first.confirmed_at
    assert get_slot.sync(slots[0].id, client=anonymous).status == models.SlotStatus.BOOKED
    no_extension = holds["extend_hold"].sync(hold.hold_id, client=alice)
    assert isinstance(no_extension, models.ExtendHoldConflictProblem)
    assert no_extension.code == models.ExtendHoldConflictProblemCode.HOLD_CONFIRMED
    not_hers = holds["get_hold"].sync(hold.hold_id, client=bob)
    assert not_hers.code == models.GetHoldForbiddenProblemCode.NOT_HOLD_OWNER

    # Cancel, then confirming is a typed 410.
    cancelled = holds["cancel_hold"].sync(hold.hold_id, client=alice)
    assert isinstance(cancelled, models.HoldRead) and cancelled.status == models.HoldStatus.CANCELLED
    gone = holds["confirm_hold"].sync(hold.hold_id, client=alice)
    assert isinstance(gone, models.ConfirmHoldHoldGoneProblem)
    assert gone.code == models.ConfirmHoldHoldGoneProblemCode.HOLD_CANCELLED
    assert gone.hold_status == models.HoldStatus.CANCELLED

    # The rest of the operations (the live stream never ends, so it is not called here).
    events = history.sync(hold.hold_id, client=alice)
    assert [event.event for event in events.items][:3] == [
        models.EventKind.HELD,
        models.EventKind.EXTENDED,
        models.EventKind.CONFIRMED,
    ]
    assert [h.hold_id for h in holds["list_holds"].sync(client=alice).items] == [hold.hold_id]
    assert isinstance(stats.sync(client=anonymous, room_id=room.id), models.Stats)
    assert health.sync(client=anonymous).status == "ok"
    assert delete_slot.sync_detailed(slots[1].id, client=admin).status_code == 204
    missing = get_slot.sync(slots[1].id, client=anonymous)
    assert missing.code == models.GetSlotNotFoundProblemCode.SLOT_NOT_FOUND
