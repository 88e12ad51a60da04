"""serving.HttpProtocol: every connection gets TCP_NODELAY, even on a socket bound as uvicorn's workers bind it."""

import asyncio
import socket

from uvicorn.config import Config
from uvicorn.server import ServerState

from serving import HttpProtocol, OneAcceptLoop


async def _app(scope: object, receive: object, send: object) -> None:  # never called here
    raise AssertionError("no request is sent")


def _accepted_nodelay(protocol_class: type) -> int:
    async def main() -> int:
        # Bound like uvicorn does for --workers: socket(AF_INET) reports protocol 0, and asyncio
        # then leaves TCP_NODELAY off on the connections it accepts.
        listener = socket.socket(socket.AF_INET)
        listener.bind(("127.0.0.1", 0))
        config = Config(app=_app, log_config=None)
        accepted: list[asyncio.BaseProtocol] = []

        def factory() -> asyncio.BaseProtocol:
            protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
            accepted.append(protocol)
            return protocol

        server = await asyncio.get_running_loop().create_server(factory, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        while not accepted:
            await asyncio.sleep(0.01)
        sock = accepted[0].transport.get_extra_info("socket")  # type: ignore[attr-defined]
        value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()
        server.close()
        return value

    return asyncio.run(main())


def test_connections_get_tcp_nodelay() -> None:
    assert _accepted_nodelay(HttpProtocol) == 1


def test_uvicorns_own_protocol_on_that_socket_leaves_nagle_on() -> None:
    # The control: uvicorn's own protocol on the same socket (why serving.HttpProtocol exists).
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert _accepted_nodelay(HttpToolsProtocol) == 0


class _CountingSocket(socket.socket):
    """A listening socket that notes each accept: True for a connection, False for an empty queue."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.accepts: list[bool] = []

    def accept(self) -> tuple[socket.socket, object]:
        try:
            connection = super().accept()
        except BlockingIOError:
            self.accepts.append(False)
            raise
        self.accepts.append(True)
        return connection


def _accepts_for_a_burst(loop_class: type[asyncio.AbstractEventLoop], burst: int = 3) -> list[bool]:
    """The listening socket's accepts while a loop takes `burst` connections already queued."""
    loop = loop_class()
    listener = _CountingSocket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(burst)]  # queued, not accepted
    accepted: list[asyncio.BaseTransport] = []

    class Taken(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    async def main() -> None:
        server = await loop.create_server(Taken, sock=listener)
        while len(accepted) < burst:
            await asyncio.sleep(0.01)
        for transport in accepted:
            transport.close()
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        for client in clients:
            client.close()
    return listener.accepts


def test_the_serving_loop_takes_one_pending_connection_per_wake_up() -> None:
    # Each wake-up takes one connection and returns to the selector, never draining the queue to
    # its end: with several workers on one socket the others get their turn at a burst.
    assert _accepts_for_a_burst(OneAcceptLoop) == [True, True, True]


def test_asyncios_own_loop_takes_a_whole_burst_in_one_wake_up() -> None:
    # The control: the stock loop accepts until the queue is empty (why serving.OneAcceptLoop exists).
    assert _accepts_for_a_burst(asyncio.SelectorEventLoop) == [True, True, True, False]
