"""How uvicorn serves this app: `uvicorn main:app --loop asyncio --http serving:HttpProtocol`.

- `--loop asyncio`: SQLite work runs on the event loop (db.Database.run), and uvloop starves
  some connections of a loop kept busy like that (see docs/performance.md#asyncio-loop-instead-of-uvloop).
- `--http serving:HttpProtocol`: uvicorn's httptools protocol with TCP_NODELAY set on every
  connection. With `--workers N` uvicorn binds the socket itself, and asyncio then skips
  TCP_NODELAY on accepted connections (the shared socket reports protocol 0), so a response's
  header and body writes meet delayed ACKs (see docs/performance.md#tcp_nodelay-on-every-connection). uvloop sets
  it itself; with asyncio this class does.
"""

import asyncio
import socket
import sys

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, sending each write at once (no Nagle delay)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


# The flags above, for the benchmark and the tests that start uvicorn as users do.
UVICORN_FLAGS = ("--loop", "asyncio", "--http", "serving:HttpProtocol")


def uvicorn_command(app: str, port: int, workers: int = 1, *extra: str) -> list[str]:
    """The uvicorn command line that serves `app` on 127.0.0.1 as users run it (bench and tests)."""
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), *UVICORN_FLAGS]
    command += ["--no-access-log", *extra]
    if workers > 1:
        command += ["--workers", str(workers)]
    return command
