"""What start-up builds, in one typed place: `app.state` is an `AppState`, read through dependencies."""

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import State

from board import Boards
from booking import HoldAttempts
from config import Settings
from db import Database
from live import Hub
from tokens import TokenCache


@dataclass(frozen=True, eq=False)
class AppState(State):
    """What the running app was started with (settings, database, tokens, hub, boards, hold attempts); fixed at start.

    A Starlette `State`, so it can stand as `app.state` itself (tests reach `app.state.db`).
    """

    settings: Settings
    db: Database
    tokens: TokenCache
    admin_token_hash: str = field(repr=False)
    hub: Hub
    boards: Boards
    attempts: HoldAttempts

    def __post_init__(self) -> None:
        State.__init__(self)  # the backing store Starlette's State falls back to; stays empty


def app_state(request: Request) -> AppState:
    """What the running app was started with (tests build apps with their own settings)."""
    state = request.app.state
    assert isinstance(state, AppState), "the app has not been started (lifespan)"
    return state


# Async dependencies: no I/O, so no thread hand-off.
async def _settings(request: Request) -> Settings:
    return app_state(request).settings


async def _database(request: Request) -> Database:
    return app_state(request).db


async def _hub(request: Request) -> Hub:
    return app_state(request).hub


async def _boards(request: Request) -> Boards:
    return app_state(request).boards


async def _attempts(request: Request) -> HoldAttempts:
    return app_state(request).attempts


SettingsDep = Annotated[Settings, Depends(_settings)]
HubDep = Annotated[Hub, Depends(_hub)]
DatabaseDep = Annotated[Database, Depends(_database)]
BoardsDep = Annotated[Boards, Depends(_boards)]
HoldAttemptsDep = Annotated[HoldAttempts, Depends(_attempts)]
