"""Settings, read once from the environment (pydantic-settings)."""

from datetime import timedelta
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MEMORY_URL = "sqlite:///:memory:"


class Settings(BaseSettings):
    """Every knob of the service; all optional, documented in the README."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = MEMORY_URL
    hold_ttl_seconds: int = Field(300, ge=1, le=86_400)
    hold_max_extensions: int = Field(1, ge=0, le=100)
    admin_token: str | None = Field(None, min_length=16)
    # None: seed the in-memory default only; true also seeds a file or PostgreSQL database.
    seed_demo_data: bool | None = None
    # Lifetime of tokens issued from now on; None: they work until revoked.
    token_ttl_days: int | None = Field(None, ge=1, le=36_500)
    # How long a SQLite writer waits for another process's write lock before giving up (503).
    # The worker's event loop waits with it, so keep it short (see docs/performance.md#sqlite-on-the-event-loop).
    sqlite_busy_timeout_seconds: float = Field(5.0, gt=0)
    # PostgreSQL connection pool, per worker process.
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    db_pool_timeout_seconds: float = Field(30.0, gt=0)
    # The change log (live board, hold histories): events older than this are pruned by writes.
    event_retention_seconds: int = Field(7 * 86_400, ge=60)
    # Live stream: heartbeat comment interval; how often a SQLite file is checked for other
    # processes' writes (PostgreSQL is woken by NOTIFY and checks this often as a safety net x20).
    stream_heartbeat_seconds: float = Field(15.0, gt=0)
    stream_poll_seconds: float = Field(0.05, gt=0)

    @property
    def token_ttl(self) -> timedelta | None:
        """How long a newly issued token works, or None for no expiry."""
        return None if self.token_ttl_days is None else timedelta(days=self.token_ttl_days)


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment once."""
    return Settings()
