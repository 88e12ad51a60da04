"""Scratch databases for the benchmark's servers: SQLite files in a temp dir, PostgreSQL databases `bench_*`."""

import shutil
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

from bench import log
from bench.record import FILE, MEMORY


class Databases:
    """Fresh databases for each server, all removed by `cleanup()`."""

    def __init__(self, pg_url: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.pg_url = pg_url
        self.pg_databases: list[str] = []
        self.pg_error: str | None = None

    def _maintenance_engine(self, **options: str) -> Engine:
        return create_engine(f"{self.pg_url.replace('postgresql://', 'postgresql+psycopg://')}/postgres", **options)

    def postgres_available(self) -> bool:
        try:
            engine = self._maintenance_engine()
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            return True
        except Exception as exc:
            self.pg_error = str(exc).splitlines()[0]
            return False

    def _admin(self, sql: str) -> None:
        engine = self._maintenance_engine(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
        engine.dispose()

    def new(self, backend: str) -> str:
        """A DATABASE_URL for a new, empty database of this backend."""
        tag = uuid.uuid4().hex[:10]
        if backend == MEMORY:
            return "sqlite:///:memory:"
        if backend == FILE:
            return f"sqlite:///{self.tmp / f'bench-{tag}.db'}"
        name = f"bench_{tag}"
        self._admin(f"CREATE DATABASE {name}")
        self.pg_databases.append(name)
        return f"{self.pg_url}/{name}"

    def drop(self, url: str) -> None:
        if url.startswith("postgresql"):
            name = url.rsplit("/", 1)[1]
            self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            self.pg_databases.remove(name)
        elif url.startswith("sqlite:///") and ":memory:" not in url:
            for suffix in ("", "-wal", "-shm"):
                Path(url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)

    def cleanup(self) -> None:
        for name in list(self.pg_databases):
            try:
                self.drop(f"{self.pg_url}/{name}")
            except Exception as exc:
                log(f"could not drop scratch database {name}: {exc}")
        shutil.rmtree(self.tmp, ignore_errors=True)
