"""serving.HttpProtocol: every connection gets TCP_NODELAY, even on a socket bound as uvicorn's workers bind it."""

import asyncio
import socket

from uvicorn.config import Config
from uvicorn.server import ServerState

from serving import HttpProtocol


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
