"""Real-browser helpers for the booking page: Debian's Chromium driven by Playwright, and the page's parts.

Playwright's own browser download cannot be reached here, so the tests drive the system
Chromium (`apt-get install chromium`). Without it, or without the `playwright` package, the
browser tests skip, unless BOOKING_REQUIRE_BROWSER=1 (as CI sets), when they fail instead.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import httpx2 as httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

CHROMIUM = Path(os.environ.get("BOOKING_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_BROWSER = os.environ.get("BOOKING_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The browser's zone and language: not the server's (UTC) nor, usually, the machine's, so a
# time shown in the wrong zone shows up (`make test` runs Python under Asia/Kolkata). Nepal's
# +05:45 offset catches whole-hour shortcuts.
ZONE = "Asia/Kathmandu"
ZONE_INFO = ZoneInfo(ZONE)
LOCALE = "en-GB"


def _browser_unavailable(reason: str) -> None:
    if REQUIRE_BROWSER:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator["Browser"]:
    """Debian's Chromium under Playwright, or a skip (a failure when BOOKING_REQUIRE_BROWSER=1)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _browser_unavailable("the playwright package is not installed (pip install -r requirements-dev.txt)")
    if not CHROMIUM.exists():
        _browser_unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass(frozen=True)
class Room:
    id: str
    name: str
    slot_ids: list[str]
    starts: list[datetime]


def seed_room(base_url: str, admin_token: str, *, slots: int, start: datetime) -> Room:
    """A new room with one-hour slots from `start`, created over the API with the admin token."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    name = f"Studio {uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=base_url, timeout=10) as client:
        response = client.post("/rooms", json={"name": name, "capacity": 6}, headers=admin)
        response.raise_for_status()
        room_id = response.json()["id"]
        slot_ids, starts = [], []
        for i in range(slots):
            begin = start + timedelta(hours=i)
            body = {"start_time": begin.isoformat(), "end_time": (begin + timedelta(hours=1)).isoformat()}
            response = client.post(f"/rooms/{room_id}/slots", json=body, headers=admin)
            response.raise_for_status()
            slot_ids.append(response.json()["id"])
            starts.append(begin)
    return Room(room_id, name, slot_ids, starts)


def new_user_token(base_url: str, name: str) -> str:
    """A user signed up over the API (not the page); its bearer token."""
    handle = f"{name.lower()}_{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{base_url}/users", json={"name": name, "handle": handle}, timeout=10)
    response.raise_for_status()
    return response.json()["token"]


def tomorrow_at(hour: int) -> datetime:
    """Tomorrow, in the browser's zone, at this hour: an aware datetime."""
    local = datetime.now(UTC).astimezone(ZONE_INFO) + timedelta(days=1)
    return local.replace(hour=hour, minute=0, second=0, microsecond=0)


class BookingPage:
    """One user's booking page in its own browser context (own sessionStorage, own token)."""

    def __init__(self, browser: "Browser", base_url: str):
        self.context: BrowserContext = browser.new_context(
            base_url=base_url, locale=LOCALE, timezone_id=ZONE, viewport={"width": 1200, "height": 800}
        )
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append((request.url, request.headers)))
        self.page.goto("/")
        self.page.locator("body[data-ready=true]").wait_for()

    def close(self) -> None:
        self.context.close()

    def sign_up(self, name: str, handle: str) -> None:
        self.page.get_by_label("Name", exact=True).fill(name)
        self.page.get_by_label("Handle").fill(handle)
        self.page.get_by_role("button", name="Sign up").click()
        self.page.locator("#who-name").filter(has_text=name).wait_for()

    def paste_token(self, token: str) -> None:
        self.page.get_by_label("Bearer token").fill(token)
        self.page.get_by_role("button", name="Use token").click()
        self.page.locator("#signed-in").wait_for()

    def choose(self, room: Room) -> None:
        """Show this room on the day of its first slot (in the browser's zone)."""
        self.page.get_by_label("Room", exact=True).select_option(room.id)
        self.page.get_by_label("Day", exact=True).fill(room.starts[0].astimezone(ZONE_INFO).date().isoformat())
        self.slot(room.slot_ids[0]).wait_for()

    def slot(self, slot_id: str) -> "Locator":
        return self.page.locator(f'#grid button[data-slot-id="{slot_id}"]')

    def status(self, slot_id: str) -> "Locator":
        return self.slot(slot_id).locator(".slot-status")

    def hold_card(self, slot_id: str) -> "Locator":
        return self.page.locator(f'#holds li[data-slot-id="{slot_id}"]')

    def booking_card(self, slot_id: str) -> "Locator":
        return self.page.locator(f'#bookings li[data-slot-id="{slot_id}"]')

    @property
    def message(self) -> "Locator":
        return self.page.locator("#message")

    @property
    def live(self) -> "Locator":
        return self.page.locator("#live")
