"""How uvicorn serves this app: `uvicorn main:app --loop serving:OneAcceptLoop --http serving:HttpProtocol`.

- `--loop serving:OneAcceptLoop`: asyncio's loop, not uvloop: SQLite work runs on the event loop
  (db.Database.run), and uvloop starves some connections of a loop kept busy like that (see
  docs/performance.md#asyncio-loop-instead-of-uvloop). It accepts one pending connection per
  wake-up, so that with `--workers N` a burst of connections is shared between the workers
  (see docs/performance.md#one-accept-per-wake-up).
- `--http serving:HttpProtocol`: uvicorn's httptools protocol with TCP_NODELAY set on every
  connection. With `--workers N` uvicorn binds the socket itself, and asyncio then skips
  TCP_NODELAY on accepted connections (the shared socket reports protocol 0), so a response's
  header and body writes meet delayed ACKs (see docs/performance.md#tcp_nodelay-on-every-connection). uvloop sets
  it itself; with asyncio this class does.
"""

import asyncio
import socket
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending each write at once (no Nagle delay)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


class OneAcceptLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, accepting one pending connection per wake-up instead of a burst.

    With `--workers N` every worker waits on the one shared listening socket, and asyncio's
    accept loop takes every pending connection (up to the listen backlog) in one go: the
    worker that wakes first for a client's burst of connections (a load balancer's or a proxy's
    keep-alive pool, wrk) takes them all and the others idle (see
    docs/performance.md#one-accept-per-wake-up). Taking one per wake-up leaves the rest to
    whichever worker wakes next, so an idle worker takes its share. The listen backlog is unchanged.
    """

    def _start_serving(
        self,
        protocol_factory: Any,
        sock: Any,
        sslcontext: Any = None,
        server: Any = None,
        backlog: int = 100,
        *args: Any,
    ) -> None:
        super()._start_serving(protocol_factory, sock, sslcontext, server, 1, *args)  # type: ignore[misc]


# The flags above, for the benchmark and the tests that start uvicorn as users do.
UVICORN_FLAGS = ("--loop", "serving:OneAcceptLoop", "--http", "serving:HttpProtocol")


def uvicorn_command(app: str, port: int, workers: int = 1, *extra: str) -> list[str]:
    """The uvicorn command line that serves `app` on 127.0.0.1 as users run it (bench and tests)."""
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), *UVICORN_FLAGS]
    command += ["--no-access-log", *extra]
    if workers > 1:
        command += ["--workers", str(workers)]
    return command
