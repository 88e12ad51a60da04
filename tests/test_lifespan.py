"""The app's lifespan (main.py) with a real `uvicorn --workers` server: shutdown closes the database's connections."""

import time

import httpx2 as httpx
import pytest
from sqlalchemy import Engine, text

from tests.factories import ADMIN_TOKEN
from tests.server import running_server

pytestmark = pytest.mark.slow


def test_stopping_the_server_closes_its_postgres_connections(postgres_engine: Engine) -> None:
    url = postgres_engine.url.render_as_string(hide_password=False)

    def backends() -> set[int]:
        with postgres_engine.connect() as conn:
            return set(
                conn.scalars(
                    text("SELECT pid FROM pg_stat_activity WHERE application_name = 'booking-api' AND datname = :db"),
                    {"db": postgres_engine.url.database},
                )
            )

    env = {"DATABASE_URL": url, "ADMIN_TOKEN": ADMIN_TOKEN, "SEED_DEMO_DATA": "false"}
    # Apps other tests built in this process may still hold (and meanwhile close) connections of
    # their own: the server's are the backends that were not there before it started.
    before = backends()
    with running_server(env, workers=2) as base_url:
        with httpx.Client(base_url=base_url) as client:
            for _ in range(20):
                assert client.get("/slots").status_code == 200
        assert backends() - before
    deadline = time.monotonic() + 10
    while backends() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not backends() - before
