"""A small Server-Sent Events client for the real-server tests of GET /slots/stream.

Each `SseStream` reads one stream on a background thread (httpx2 `client.stream`), parses
`event:` / `id:` / `data:` lines and `:` comments into a thread-safe queue, and records every
event it has seen. `Board` applies events the way a front-end would: a snapshot replaces the
board, `slot` upserts one slot, `slot_deleted` removes one.
"""

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx

COMMENT = "comment"  # the kind given to `:` lines (heartbeats)
END = "end"  # the kind given to the end of the stream (server closed it, or it failed)


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event (or a comment, or the end of the stream), as the client saw it."""

    kind: str
    id: str | None
    raw: str  # the data lines joined by "\n" (a comment's text; the end's reason)
    at: float = field(default_factory=time.monotonic)  # when it arrived (monotonic clock)
    wall: float = field(default_factory=time.time)  # when it arrived (wall clock, to compare with server times)

    @property
    def data(self) -> Any:
        """The data parsed as JSON."""
        return json.loads(self.raw)

    @property
    def position(self) -> int:
        """The event id as a change-log position."""
        assert self.id is not None, self
        return int(self.id)


class SseStream:
    """One open GET request read on a background thread; events arrive in `self.queue`."""

    def __init__(
        self,
        base_url: str,
        path: str = "/slots/stream",
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        last_event_id: str | int | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.base_url, self.path = base_url, path
        self.params = dict(params or {})
        self.headers = dict(headers or {})
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = str(last_event_id)
        self.queue: queue.Queue[SseEvent] = queue.Queue()
        self.events: list[SseEvent] = []  # everything taken from the queue so far, in order
        self.status_code: int | None = None
        self.response_headers: dict[str, str] = {}
        self.error_body: str | None = None
        self.ended = threading.Event()
        self._opened = threading.Event()
        self._closing = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._read, name=f"sse {path}", daemon=True)
        self._thread.start()
        if not self._opened.wait(connect_timeout):
            self.close()
            raise TimeoutError(f"no response headers within {connect_timeout} s")

    # --- the reader thread ---------------------------------------------------------------------

    def _read(self) -> None:
        reason = "closed by server"
        try:
            # No read timeout: a test bounds its waits itself, and close() unblocks the read.
            timeout = httpx.Timeout(10.0, read=None)
            with (
                httpx.Client(base_url=self.base_url, timeout=timeout) as client,
                client.stream("GET", self.path, params=self.params, headers=self.headers) as response,
            ):
                self.status_code = response.status_code
                self.response_headers = dict(response.headers)
                stream = response.extensions.get("network_stream")
                self._socket = stream.get_extra_info("socket") if stream is not None else None
                if response.status_code != 200:
                    self.error_body = response.read().decode()
                    self._opened.set()
                    return
                self._opened.set()
                self._parse(response.iter_lines())
        except (httpx.HTTPError, OSError) as exc:
            reason = "closed by client" if self._closing.is_set() else f"{type(exc).__name__}: {exc}"
        finally:
            if self._closing.is_set() and reason == "closed by server":
                reason = "closed by client"
            self._opened.set()
            self.queue.put(SseEvent(END, None, reason))
            self.ended.set()

    def _parse(self, lines: Iterator[str]) -> None:
        kind, event_id, data = "message", None, []
        for line in lines:
            if self._closing.is_set():
                return
            if line == "":
                if data:
                    self.queue.put(SseEvent(kind, event_id, "\n".join(data)))
                kind, event_id, data = "message", None, []
            elif line.startswith(":"):
                self.queue.put(SseEvent(COMMENT, None, line[1:].strip()))
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "id":
                    event_id = value
                elif name == "data":
                    data.append(value)

    # --- the test's side -------------------------------------------------------------------------

    def next(self, timeout: float) -> SseEvent:
        """The next event (comments and the end included); TimeoutError if none arrives in time."""
        try:
            event = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout} s; seen so far: {self.describe()}") from None
        self.events.append(event)
        return event

    def wait_for(self, predicate: Callable[[SseEvent], bool], timeout: float) -> SseEvent:
        """Take events until one matches; TimeoutError if none does in time (or the stream ends first)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.next(max(deadline - time.monotonic(), 0.0))
            if predicate(event):
                return event
            if event.kind == END:
                raise TimeoutError(f"the stream ended ({event.raw}) before a matching event: {self.describe()}")

    def drain(self, wait: float = 0.0) -> list[SseEvent]:
        """Take every event queued now, and those arriving during the next `wait` seconds."""
        deadline = time.monotonic() + wait
        taken = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                return taken
            self.events.append(event)
            taken.append(event)

    @property
    def last_id(self) -> str | None:
        """The id of the last event taken that carried one (what an EventSource sends as Last-Event-ID)."""
        return next((event.id for event in reversed(self.events) if event.id is not None), None)

    def describe(self, last: int = 8) -> str:
        return repr([(e.kind, e.id, e.raw[:120]) for e in self.events[-last:]])

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect (the server sees the client go) and wait for the reader thread."""
        self._closing.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the SSE reader thread did not stop"

    def __enter__(self) -> "SseStream":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Board:
    """What a client shows: slot id -> the slot as last received, built from stream events."""

    def __init__(self) -> None:
        self.slots: dict[str, dict[str, Any]] = {}
        self.snapshots = 0

    def apply(self, event: SseEvent) -> None:
        """Apply one event; comments and the end change nothing."""
        if event.kind == "snapshot":
            self.snapshots += 1
            self.slots = {item["id"]: item for item in event.data["items"]}
        elif event.kind == "slot":
            item = event.data
            self.slots[item["id"]] = item
        elif event.kind == "slot_deleted":
            self.slots.pop(event.data["id"], None)

    def apply_all(self, events: list[SseEvent]) -> None:
        for event in events:
            self.apply(event)

    def items(self) -> list[dict[str, Any]]:
        """The board in GET /slots order (start time, then id)."""
        return sorted(self.slots.values(), key=lambda item: (item["start_time"], item["id"]))


class Follower:
    """A client of one board: a stream, the board it builds, and resumption with Last-Event-ID.

    Every connection's events are kept (`connections`), to check their ids afterwards.
    """

    def __init__(self, base_url: str, params: Mapping[str, str], headers: Mapping[str, str] | None = None) -> None:
        self.base_url, self.params, self.headers = base_url, dict(params), dict(headers or {})
        self.board = Board()
        self.last_id: str | None = None
        self.stream: SseStream | None = None
        # Per connection: the Last-Event-ID it was opened with, and the events it delivered.
        self.connections: list[tuple[str | None, list[SseEvent]]] = []
        self._unexamined: list[SseEvent] = []  # applied, but not yet looked at by wait_for

    @property
    def connected(self) -> bool:
        return self.stream is not None

    def connect(self) -> None:
        """Open a stream, resuming after the last event received (if any)."""
        assert self.stream is None
        self._unexamined.clear()
        self.stream = SseStream(self.base_url, params=self.params, headers=self.headers, last_event_id=self.last_id)
        assert self.stream.status_code == 200, self.stream.error_body
        self.connections.append((self.last_id, []))

    def pump(self, wait: float = 0.0) -> list[SseEvent]:
        """Apply every event received so far, and those arriving in the next `wait` seconds."""
        assert self.stream is not None
        events = [event for event in self.stream.drain(wait) if event.kind not in (COMMENT, END)]
        self.board.apply_all(events)
        self.connections[-1][1].extend(events)
        self._unexamined.extend(events)
        for event in events:
            if event.id is not None:
                self.last_id = event.id
        return events

    def disconnect(self) -> None:
        """Close the stream, keeping what had arrived before the close."""
        assert self.stream is not None
        self.pump()
        self.stream.close()
        self.pump()
        self.stream = None

    def wait_for(self, predicate: Callable[[SseEvent], bool], timeout: float) -> SseEvent:
        """Skip past applied events until one matches, applying more as they come (TimeoutError otherwise)."""
        assert self.stream is not None
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            while self._unexamined:
                event = self._unexamined.pop(0)
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching event within {timeout} s: {self.stream.describe()}")
            time.sleep(0.01)

    def check_ids(self) -> None:
        """Per connection: ids never go back, resumed ones start after Last-Event-ID, only lapses repeat one.

        Event ids are change-log positions; a lapse (which writes nothing) carries the stream's
        current position, so it may repeat the previous id.
        """
        for resumed_from, events in self.connections:
            if resumed_from is not None and events:
                assert events[0].kind != "snapshot", "a resume from a recent position got a snapshot"
            previous = int(resumed_from) if resumed_from is not None else -1
            for event in events:
                if event.position == previous:
                    assert event.kind == "slot" and event.data["status"] == "AVAILABLE", event  # a lapse
                else:
                    assert event.position > previous, (previous, event)
                previous = event.position


def list_all_slots(client: httpx.Client, params: Mapping[str, str], headers: Mapping[str, str] | None = None) -> list:
    """Every item GET /slots returns for these filters and this caller, following the cursor."""
    items: list[dict[str, Any]] = []
    query = {**params, "limit": "500"}
    while True:
        response = client.get("/slots", params=query, headers=dict(headers or {}))
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        query["cursor"] = page["next_cursor"]
