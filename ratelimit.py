"""Rate limits (the `limits` library): sign-ups per client address, holds per user; 429 RATE_LIMITED with Retry-After.

Counted with the sliding-window-counter strategy: two counters per key (constant storage, one
round trip to Redis), without the double burst a fixed window allows across its boundary.
"""

import logging
import math
import time
import uuid
from typing import Annotated

from fastapi import Depends, Request
from limits import RateLimitItem, parse_many
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import metrics
from auth import CurrentUserId
from config import Settings
from errors import Code, DomainError

_SCOPE_KEY = "booking.rate_limits"
KEY_PREFIX = "booking-ratelimit"
# A rate limit must never stall the API: a store that does not answer within this lets the request through.
STORE_TIMEOUT_SECONDS = 0.5

log = logging.getLogger("booking.ratelimit")


class RateLimited(DomainError):
    """Too many requests from this caller for now (429)."""

    status = 429
    title = "Too many requests"


def _async_url(url: str) -> str:
    # The same URL users write for `limits`, served by its asyncio storage (no blocking on the event loop).
    return url if url.startswith("async+") else f"async+{url}"


class RateLimits:
    """This app's limits and their counters' store (RATE_LIMIT_STORAGE_URL)."""

    def __init__(self, settings: Settings) -> None:
        url = _async_url(settings.rate_limit_storage_url)
        options: dict[str, float | str | bool] = {"wrap_exceptions": True}
        if url.startswith(("async+redis", "async+valkey")):
            options |= {
                "implementation": "redispy",
                "key_prefix": KEY_PREFIX,
                "socket_timeout": STORE_TIMEOUT_SECONDS,
                "socket_connect_timeout": STORE_TIMEOUT_SECONDS,
            }
        self.storage = storage_from_string(url, **options)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.signups = parse_many(settings.rate_limit_signups) if settings.rate_limit_signups else []
        self.holds = parse_many(settings.rate_limit_holds) if settings.rate_limit_holds else []

    async def hit(self, name: str, items: list[RateLimitItem], key: str, what: str) -> None:
        """Count one request against every limit in `items` for `key`; 429 once one is used up."""
        for item in items:
            try:
                allowed = await self.limiter.hit(item, name, key)
                if allowed:
                    continue
                reset_at, _ = await self.limiter.get_window_stats(item, name, key)
            except StorageError as exc:
                log.warning("rate limit store unavailable, request let through: %s", exc.storage_error)
                return
            metrics.RATE_LIMITED.labels(name).inc()
            retry_after = max(1, math.ceil(reset_at - time.time()))
            raise RateLimited(
                Code.RATE_LIMITED,
                f"At most {item} {what}; retry in {retry_after} s.",
                headers={"Retry-After": str(retry_after)},
                limit=str(item),
            )

    async def close(self) -> None:
        """Close the store's connections (Redis); an in-memory store has none."""
        bridge = getattr(self.storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            await aclose()


class RateLimitStore:
    """Puts the app's `RateLimits` in each request's scope, and closes its store when the app shuts down.

    A pure ASGI middleware: the limits are built with the app's settings, and the lifespan is the
    one moment the store's connections can be closed on the loop that opened them.
    """

    def __init__(self, app: ASGIApp, *, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":

            async def send_closing(message: Message) -> None:
                if message["type"] == "lifespan.shutdown.complete":
                    await self.limits.close()
                await send(message)

            await self.app(scope, receive, send_closing)
            return
        scope[_SCOPE_KEY] = self.limits
        await self.app(scope, receive, send)


def _limits(request: Request) -> RateLimits:
    limits = request.scope.get(_SCOPE_KEY)
    assert isinstance(limits, RateLimits), "the app was built without RateLimitStore (main.create_app)"
    return limits


async def limit_signups(request: Request) -> None:
    """RATE_LIMIT_SIGNUPS per client address (behind a proxy: the proxy's, unless uvicorn --proxy-headers)."""
    limits = _limits(request)
    if limits.signups:
        await limits.hit(
            "signups", limits.signups, request.client.host if request.client else "unknown", "sign-ups from one address"
        )


async def limit_holds(request: Request, user_id: CurrentUserId) -> uuid.UUID:
    """The caller's user id, counted against RATE_LIMIT_HOLDS: after authentication, before any database work."""
    limits = _limits(request)
    if limits.holds:
        await limits.hit("holds", limits.holds, str(user_id), "holds per user")
    return user_id


SignupRateLimit = Annotated[None, Depends(limit_signups)]
# The user id and the limit in one dependency: a route that took both separately resolved the
# user's dependency twice (FastAPI caches its value, not the walk to it).
HoldingUserId = Annotated[uuid.UUID, Depends(limit_holds)]
