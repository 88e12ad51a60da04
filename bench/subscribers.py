"""Many live-board subscribers (`GET /slots/stream`) in one asyncio process: raw bytes in, boards out.

The client does as little as it can while events arrive: each connection is an
`asyncio.Protocol` that stores every `data_received` chunk with its `time.monotonic()` (one
clock for every process on the machine, so the writer's times compare with these). Everything
else (HTTP head, chunked framing, SSE fields, JSON, applying events to a board) happens after
the run, so parsing never delays the reading of a later event. An event's arrival is the time
of the chunk that completed it.

Standard library only: bench.fanout starts these groups with the `spawn` method and talks to
them over a pipe (`group_main`).
"""

import asyncio
import bisect
import contextlib
import json
import re
import resource
import time
from dataclasses import dataclass, field
from typing import Any

OPENING_CONCURRENCY = 64  # streams being opened at once (each opening reads the board on the server)
_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def raise_fd_limit() -> int:
    """Soft open-file limit up to the hard one: 1,000 streams need 1,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def request_bytes(path: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{auth}Connection: keep-alive\r\n\r\n"
    ).encode()


class Stream(asyncio.Protocol):
    """One open stream: every chunk received, with its arrival time; `ready` once the snapshot is in."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.ready = asyncio.Event()
        self.lost_at: float | None = None
        self.error: str | None = None
        self.transport: asyncio.Transport | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.times.append(time.monotonic())
        self.chunks.append(data)
        if self.ready.is_set():
            return
        self._head += data
        if len(self._head) >= 12 and not self._head.startswith(b"HTTP/1.1 200"):
            self.error = self._head[:200].decode(errors="replace")
            self.ready.set()
            return
        at = self._head.find(b"event: snapshot")
        if at >= 0 and _BLANK_LINE.search(self._head, at):
            self._head = b""
            self.ready.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_at = time.monotonic()
        if not self.ready.is_set():
            self.error = self.error or f"connection lost before the snapshot: {exc}"
            self.ready.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_streams(host: str, port: int, requests: list[bytes], timeout: float) -> tuple[list[Stream], float]:
    """Open every stream (OPENING_CONCURRENCY at a time) and wait for each one's snapshot."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)
    streams = [Stream(r) for r in requests]
    started = time.monotonic()

    async def open_one(stream: Stream) -> None:
        async with gate:
            try:
                await loop.create_connection(lambda: stream, host, port)
                await asyncio.wait_for(stream.ready.wait(), timeout)
            except (OSError, TimeoutError) as exc:
                stream.error = stream.error or f"{type(exc).__name__}: {exc}"

    await asyncio.gather(*(open_one(s) for s in streams))
    return streams, time.monotonic() - started


@dataclass
class Parsed:
    """One stream after the run: its status, its events (arrival, id, slot id) and its final board."""

    caller: int
    status: int | None
    error: str | None
    lost_early: bool
    snapshot_at: float | None
    events: list[tuple[float, int, str]] = field(default_factory=list)  # slot and slot_deleted events
    board: dict[str, Any] | None = None
    out_of_order: int = 0  # events whose id is below the previous one's (lapses would; none expected)
    pings: int = 0


def parse(stream: Stream, caller: int, stopped_at: float) -> Parsed:
    """HTTP head, chunked framing, SSE events and the board they build, with each event's arrival time."""
    raw = b"".join(stream.chunks)
    ends = []  # raw offset just past each chunk
    total = 0
    for chunk in stream.chunks:
        total += len(chunk)
        ends.append(total)
    lost_early = stream.lost_at is not None and stream.lost_at < stopped_at
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return Parsed(caller, None, stream.error or "no HTTP head", lost_early, None)
    head = raw[:head_end]
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        return Parsed(caller, status, stream.error or head[:200].decode(errors="replace"), lost_early, None)
    # The body as segments of raw (chunked transfer encoding, or the rest of the bytes as they are).
    segments: list[tuple[int, int]] = []
    pos = head_end + 4
    if b"transfer-encoding: chunked" in head.lower():
        while True:
            line_end = raw.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(raw[pos:line_end].split(b";")[0] or b"0", 16)
            if size == 0:
                break
            start = line_end + 2
            end = min(start + size, len(raw))
            segments.append((start, end))
            if end < start + size:
                break
            pos = end + 2
    else:
        segments.append((pos, len(raw)))
    body = b"".join(raw[s:e] for s, e in segments)
    body_starts, acc = [], 0
    for s, e in segments:
        body_starts.append(acc)
        acc += e - s

    def arrival(body_offset: int) -> float:
        k = bisect.bisect_right(body_starts, body_offset) - 1
        raw_offset = segments[k][0] + body_offset - body_starts[k]
        return stream.times[bisect.bisect_right(ends, raw_offset)]

    parsed = Parsed(caller, status, stream.error, lost_early, None)
    board: dict[str, Any] | None = None
    start = 0
    last_id = -1
    for blank in _BLANK_LINE.finditer(body):
        block, start, at = body[start : blank.start()], blank.end(), blank.end() - 1
        kind, event_id, data = "message", None, []
        for line in block.splitlines():
            if line.startswith(b":"):
                parsed.pings += 1
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                kind = value.decode()
            elif name == b"id":
                event_id = int(value)
            elif name == b"data":
                data.append(value)
        if not data:
            continue
        payload = json.loads(b"\n".join(data))
        if kind == "snapshot":
            board = {item["id"]: item for item in payload["items"]}
            parsed.snapshot_at = arrival(at)
            continue
        if board is None or event_id is None:
            continue
        if event_id < last_id:
            parsed.out_of_order += 1
        last_id = max(last_id, event_id)
        if kind == "slot":
            board[payload["id"]] = payload
        elif kind == "slot_deleted":
            board.pop(payload["id"], None)
        else:
            continue
        parsed.events.append((arrival(at), event_id, payload["id"]))
    parsed.board = board
    return parsed


# --- a group in its own process -------------------------------------------------------------------


async def _group(conn: Any, host: str, port: int, path: str, callers: list[tuple[int, str | None]]) -> None:
    loop = asyncio.get_running_loop()
    streams, seconds = await open_streams(host, port, [request_bytes(path, token) for _, token in callers], 120)
    failed = [s.error for s in streams if s.error]
    conn.send(("ready", len(streams) - len(failed), failed[:5], round(seconds, 2)))
    # Wait for the parent's "stop" without blocking the loop: the streams must be read as events come.
    stop = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: stop.done() or stop.set_result(None))
    await stop
    loop.remove_reader(conn.fileno())
    conn.recv()
    stopped_at = time.monotonic()
    for s in streams:
        s.close()
    await asyncio.sleep(0)
    conn.send(("result", [parse(s, caller, stopped_at) for s, (caller, _) in zip(streams, callers, strict=True)]))


def group_main(conn: Any, host: str, port: int, path: str, callers: list[tuple[int, str | None]]) -> None:
    """A process's entry point: open `callers`' streams, say "ready", read until "stop", send the parsed streams."""
    raise_fd_limit()
    try:
        asyncio.run(_group(conn, host, port, path, callers))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
