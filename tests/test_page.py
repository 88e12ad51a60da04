"""The booking page (`GET /`): how it is served, and two users on it in a real browser.

The browser tests (marked slow) need a browser: Debian's Chromium at /usr/bin/chromium driven by
Playwright (tests/browser.py). Without one they skip, or fail when BOOKING_REQUIRE_BROWSER=1.
Each user is a separate browser context against a real server process; live updates must
arrive over the page's stream within a second, without a reload.
"""

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from main import create_app
from tests.browser import ZONE_INFO, BookingPage, Room, chromium, new_user_token, seed_room, tomorrow_at
from tests.factories import ADMIN_TOKEN, isolated_settings
from tests.server import running_server

LIVE_MS = 1500  # "within a second", with room for a loaded CI machine
SHORT_TTL = 3
DASH = "\N{EN DASH}"  # between a slot's start and end

# --------------------------------------------------------------------------- serving


def test_index_serves_the_page_with_a_strict_content_security_policy() -> None:
    with TestClient(create_app(isolated_settings())) as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert response.headers["referrer-policy"] == "no-referrer"


def test_static_assets_are_served_and_the_page_is_not_in_the_api_schema() -> None:
    with TestClient(create_app(isolated_settings())) as client:
        script = client.get("/static/app.js")
        style = client.get("/static/app.css")
        missing = client.get("/static/nothing.js")
        schema = client.get("/openapi.json").json()
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert "/" not in schema["paths"]


# --------------------------------------------------------------------------- in a browser


def _server_env(ttl: int) -> dict[str, str]:
    return {
        "DATABASE_URL": "sqlite:///:memory:",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SEED_DEMO_DATA": "false",
        "HOLD_TTL_SECONDS": str(ttl),
    }


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server(_server_env(120)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def short_ttl_server() -> Iterator[str]:
    """A server whose holds lapse after SHORT_TTL seconds."""
    with running_server(_server_env(SHORT_TTL)) as base_url:
        yield base_url


@pytest.fixture
def open_page(browser) -> Iterator[Callable[[str], BookingPage]]:  # type: ignore[no-untyped-def]
    """Opens the page as a new user (a new browser context); checks it raised no script error."""
    pages: list[BookingPage] = []

    def open_(base_url: str) -> BookingPage:
        pages.append(BookingPage(browser, base_url))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()
    assert [error for page in pages for error in page.errors] == []


def _two_users_on(
    open_page: Callable[[str], BookingPage], base_url: str, room: Room
) -> tuple[BookingPage, BookingPage]:
    """Ann and Ben, each with a pasted token in their own browser, both looking at `room`."""
    a, b = open_page(base_url), open_page(base_url)
    a.paste_token(new_user_token(base_url, "Ann"))
    b.paste_token(new_user_token(base_url, "Ben"))
    a.choose(room)
    b.choose(room)
    return a, b


def _local_time(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(ZONE_INFO).strftime("%H:%M")


def _handle() -> str:
    return f"ann_{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_hold_shows_as_held_in_the_other_users_grid_within_a_second(server, open_page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    room = seed_room(server, ADMIN_TOKEN, slots=4, start=tomorrow_at(10))
    slot = room.slot_ids[1]
    a, b = open_page(server), open_page(server)
    a.sign_up("Ann", _handle())
    b.paste_token(new_user_token(server, "Ben"))
    a.choose(room)
    b.choose(room)
    # The slot's times are in the browser's zone, in words and in colour.
    expect(a.slot(slot).locator(".slot-time")).to_have_text(f"11:00{DASH}12:00")
    expect(b.status(slot)).to_have_text("Available")

    a.slot(slot).click()

    expect(a.status(slot)).to_have_text(re.compile(r"^Held by you · \d:\d\d left$"))
    expires_at = a.hold_card(slot).locator(".countdown").get_attribute("data-expires-at")
    assert expires_at
    expect(b.status(slot)).to_have_text(f"Held until {_local_time(expires_at)}", timeout=LIVE_MS)
    expect(b.slot(slot)).to_have_class(re.compile(r"\bHELD_BY_OTHER\b"))
    expect(b.status(room.slot_ids[0])).to_have_text("Available")
    # The token travels only in headers: the stream is read with fetch(), not EventSource.
    token = a.page.evaluate("sessionStorage.getItem('booking.token')")
    assert token
    assert not [url for url, _ in a.requests if token in url]
    streams = [headers for url, headers in a.requests if "/slots/stream?" in url]
    assert streams
    assert streams[-1]["authorization"] == f"Bearer {token}"


@pytest.mark.slow
def test_release_shows_the_slot_free_in_the_other_users_grid(server, open_page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    room = seed_room(server, ADMIN_TOKEN, slots=3, start=tomorrow_at(14))
    slot = room.slot_ids[0]
    a, b = _two_users_on(open_page, server, room)
    a.slot(slot).click()
    expect(b.status(slot)).to_have_text(re.compile(r"^Held until "), timeout=LIVE_MS)

    a.hold_card(slot).get_by_role("button", name=re.compile("^Release")).click()

    expect(a.message).to_have_text(re.compile(r"^Released: "))
    expect(a.status(slot)).to_have_text("Available")
    expect(b.status(slot)).to_have_text("Available", timeout=LIVE_MS)
    expect(a.hold_card(slot)).to_have_count(0)


@pytest.mark.slow
def test_lapsed_hold_shows_the_slot_free_to_both_users(short_ttl_server, open_page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    room = seed_room(short_ttl_server, ADMIN_TOKEN, slots=2, start=tomorrow_at(9))
    slot = room.slot_ids[0]
    a, b = _two_users_on(open_page, short_ttl_server, room)

    a.slot(slot).click()
    expect(a.hold_card(slot).locator(".countdown")).to_have_text(re.compile(r"^0:0[0-3] left"))
    expect(b.status(slot)).to_have_text(re.compile(r"^Held until "), timeout=LIVE_MS)

    # Nobody acts: the hold's time runs out, and both grids show the slot free again.
    lapse_ms = SHORT_TTL * 1000 + LIVE_MS
    expect(a.status(slot)).to_have_text("Available", timeout=lapse_ms)
    expect(b.status(slot)).to_have_text("Available", timeout=lapse_ms)
    expect(a.hold_card(slot)).to_have_count(0)
    expect(a.message).to_have_text(re.compile(r"^Your hold has expired: .*\. The slot is free again\.$"))
    expect(a.message).to_contain_text(f"09:00{DASH}10:00")


@pytest.mark.slow
def test_click_on_a_slot_held_by_another_user_shows_the_409_as_a_sentence(server, open_page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    room = seed_room(server, ADMIN_TOKEN, slots=2, start=tomorrow_at(16))
    slot = room.slot_ids[1]
    a, b = _two_users_on(open_page, server, room)
    a.slot(slot).click()
    expect(a.status(slot)).to_have_text(re.compile("^Held by you"))
    expires_at = a.hold_card(slot).locator(".countdown").get_attribute("data-expires-at")
    assert expires_at

    # By keyboard: the slot is a real button.
    b.slot(slot).focus()
    b.page.keyboard.press("Enter")

    held_until = _local_time(expires_at)
    expect(b.message).to_have_text(f"This slot is held by another user until {held_until}.")
    expect(b.message).to_have_attribute("data-kind", "error")
    expect(b.status(slot)).to_have_text(f"Held until {held_until}")
    expect(b.page.locator("#holds li")).to_have_count(0)


@pytest.mark.slow
def test_confirmed_hold_appears_in_my_bookings_and_can_be_cancelled(server, open_page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    room = seed_room(server, ADMIN_TOKEN, slots=3, start=tomorrow_at(18))
    slot = room.slot_ids[2]
    a = open_page(server)
    a.sign_up("Ann", _handle())
    expect(a.page.locator("#new-token-value")).to_have_text(re.compile(r"^\S{20,}$"))
    a.choose(room)
    a.slot(slot).click()
    card = a.hold_card(slot)
    expect(card).to_contain_text(f"{room.name} · ")
    expect(card).to_contain_text(f"20:00{DASH}21:00")

    card.get_by_role("button", name=re.compile("^Extend")).click()
    expect(a.message).to_have_text(re.compile(r"^Extended: held until \d\d:\d\d\.$"))
    expect(card.get_by_role("button", name=re.compile("^Extend"))).to_be_disabled()  # one extension allowed
    card.get_by_role("button", name=re.compile("^Confirm")).click()

    booking = a.booking_card(slot)
    expect(booking).to_contain_text(f"20:00{DASH}21:00")
    expect(booking).to_contain_text("Booked")
    expect(a.page.locator("#holds li")).to_have_count(0)
    expect(a.status(slot)).to_have_text("Booked by you")

    booking.get_by_role("button", name=re.compile("^Cancel")).click()
    expect(a.page.locator("#bookings li")).to_have_count(0)
    expect(a.status(slot)).to_have_text("Available")
