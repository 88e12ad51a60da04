"""Request bodies over 64 KiB are refused with 413 PAYLOAD_TOO_LARGE before they are read whole.

FastAPI reads and parses a JSON body before any dependency runs, authentication included, so
without this an anonymous caller's 50 MB body is held in memory and parsed before its 401. A pure
ASGI middleware placed before everything else: a declared `Content-Length` over the limit is
refused without reading a byte; a chunked body is counted as it streams, and refused the moment
it passes the limit.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from errors import Code, problem_response

MAX_BODY_BYTES = 64 * 1024  # the largest valid body is well under 1 KiB
_CONTENT_LENGTH = b"content-length"


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        413,
        "Content too large",
        Code.PAYLOAD_TOO_LARGE.code,
        f"The request body is larger than {MAX_BODY_BYTES} bytes.",
        # The rest of the body is never read: close the connection rather than drain it.
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)


class BodyLimit:
    """Refuses request bodies larger than MAX_BODY_BYTES with a 413 problem."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == _CONTENT_LENGTH), None)
        if declared is not None:
            # A declared length bounds the body (the server stops reading there): check it once, read freely.
            if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
                await _refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return

        received = 0
        refused = answered = response_started = False

        async def counting_receive() -> Message:
            nonlocal received, refused, answered
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    refused = True
                    if not response_started:
                        await _refuse(scope, receive, send)
                        answered = True
                    # To the app the client is gone: it stops reading, and what it answers is dropped.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if answered:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
