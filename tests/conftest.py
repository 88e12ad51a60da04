"""Fixtures shared by the API tests; the helpers they use live in tests/factories.py."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from config import Settings
from main import create_app
from tests.factories import isolated_settings


@pytest.fixture
def settings() -> Settings:
    return isolated_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client
