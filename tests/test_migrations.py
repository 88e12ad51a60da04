"""Alembic migrations build, from empty, exactly the schema the models describe, on both backends."""

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from config import Settings
from db import ALEMBIC_INI, Database, prepare_schema
from models import Base
from tests.conftest import POSTGRES_DB

MIGRATION_DB = f"{POSTGRES_DB}_migration"


@pytest.fixture
def empty_database_url(backend: str, tmp_path, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/migrated.db"
        return
    engine: Engine = request.getfixturevalue("postgres_engine")
    admin = create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{MIGRATION_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{MIGRATION_DB}"'))
    yield make_url(engine.url).set(database=MIGRATION_DB).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{MIGRATION_DB}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_from_empty_matches_the_models(empty_database_url: str) -> None:
    db = Database(Settings(database_url=empty_database_url, seed_demo_data=False))
    try:
        prepare_schema(db)
        prepare_schema(db)  # a second start finds the schema current and changes nothing
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            head = ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()
            assert context.get_current_revision() == head
            indexes = {ix["name"]: ix for ix in inspect(conn).get_indexes("holds")}
            assert indexes["uq_holds_active_slot"]["unique"]
    finally:
        db.dispose()
