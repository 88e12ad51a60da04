"""Builds the app: settings, database lifespan, routers, error handlers. `uvicorn main:app` serves it."""

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from anyio import to_thread
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.orm import Session

from auth import issue_token, resolve_admin_token
from board import Boards
from bodylimit import BodyLimit
from booking import HoldAttempts
from config import Settings, get_settings
from db import Database, prepare_schema, seed_demo_data
from errors import install_error_handlers
from live import Hub
from observability import RequestObservability, configure_access_log
from openapi import install_openapi
from ratelimit import RateLimits, RateLimitStore
from requestid import HEADER as REQUEST_ID_HEADER
from routers import health, holds, metrics, page, rooms, slots, stats, users
from state import AppState
from tokens import TokenCache

# The document lists the resources in this order. Requests are matched against the hot routers
# first (each router passed over costs a regex match per route): ~20 us per hold or listing,
# docs/performance.md. Their prefixes are disjoint from users' and rooms', so every request
# still matches the route it matched before; the page (`/`, `/static`) stays last.
DOCUMENTED = (users, rooms, slots, holds, health, stats, metrics, page)
MATCHED = (slots, holds, users, rooms, health, stats, metrics, page)


def _start(settings: Settings) -> AppState:
    db = Database(settings)
    prepare_schema(db)
    # Demo data by default only in memory: a file or PostgreSQL database gets it on request alone.
    seed = db.in_memory if settings.seed_demo_data is None else settings.seed_demo_data
    with Session(db.engine, expire_on_commit=False) as session:
        admin = resolve_admin_token(session, settings, shared=not db.in_memory)
        lines = [f"booking: database {db.backend}; admin token: {admin.shown}"]
        if seed:
            created = seed_demo_data(session)
            # Tokens only for demo users created just now: a restart mints none.
            for user in created:
                token = issue_token(session, user.id, ttl=settings.token_ttl)
                lines.append(f"booking: demo user {user.handle} ({user.id}) token: {token}")
            if not created:
                lines.append(
                    "booking: demo data already seeded by another worker or an earlier start, which printed its"
                    " tokens (an admin can issue more: POST /users/{id}/token)"
                )
    print("\n".join(lines), flush=True)
    return AppState(
        settings=settings,
        db=db,
        tokens=TokenCache(),
        admin_token_hash=admin.token_hash,
        hub=Hub(db, settings),
        boards=Boards(db),
        attempts=HoldAttempts(db),
    )


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings) -> AsyncIterator[None]:
    """Open the database (schema, demo data) and the live hub on start-up; close both on shutdown."""
    # Start-up's database work (migrations, seeding) can wait on locks: a thread, not the loop.
    state = await run_in_threadpool(_start, settings)
    app.state = state
    # Everything built at start-up (modules, routes, compiled statements) lives as long as the
    # process: move it out of the cyclic collector's view, so each full collection scans only
    # what requests allocate.
    gc.freeze()
    if type(asyncio.get_running_loop()).__module__.startswith("uvloop"):
        # SQLite work runs on the event loop; uvloop then starves some connections (serving.py).
        warning = "running on uvloop; start uvicorn with --loop serving:OneAcceptLoop (see serving.py)"
        print(f"booking: warning: {warning}", flush=True)
    # PostgreSQL work runs in AnyIO's thread pool, one call per request; one thread per database
    # connection keeps each useful (see docs/performance.md#thread-pool-sizing).
    to_thread.current_default_thread_limiter().total_tokens = state.db.max_connections
    state.hub.start()
    try:
        yield
    finally:
        await state.hub.stop()
        state.db.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build an app for these settings (tests pass their own; `app` below reads the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Hold-and-confirm booking API",
        version="1.0.0",
        summary="Hold a time slot, then confirm or release it; never two live claims on one slot.",
        lifespan=partial(lifespan, settings=settings),
        # Relative: the document describes whichever host serves it.
        servers=[{"url": "/", "description": "The server this document was read from"}],
    )
    install_error_handlers(app)
    install_openapi(app, [route.path for module in DOCUMENTED for route in module.router.routes])
    for module in MATCHED:
        app.include_router(module.router)
    # Pure ASGI middlewares; the last added runs first. Ids, logs and metrics see every answer;
    # CORS headers go on 413s and 429s too; a body is bounded before anything reads it.
    app.add_middleware(RateLimitStore, limits=RateLimits(settings))
    app.add_middleware(BodyLimit)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        )
    app.add_middleware(RequestObservability, log_requests=settings.access_log)
    if settings.access_log:
        configure_access_log()
    return app


app = create_app()
