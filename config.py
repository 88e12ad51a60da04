"""Settings, read once from the environment (pydantic-settings)."""

from datetime import timedelta
from functools import lru_cache

from limits import parse_many
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MEMORY_URL = "sqlite:///:memory:"


class Settings(BaseSettings):
    """Every knob of the service; all optional, documented in the README."""

    model_config = SettingsConfigDict(extra="ignore")

    database_url: str = MEMORY_URL
    hold_ttl_seconds: int = Field(300, ge=1, le=86_400)
    hold_max_extensions: int = Field(1, ge=0, le=100)
    # Hoarding: how many live (unexpired, unconfirmed) holds one user may have at once, and how
    # long a user waits to hold a slot again after their own claim on it ended (released,
    # lapsed or cancelled), so a script cannot keep a slot by releasing and re-holding it.
    hold_max_active_per_user: int = Field(4, ge=1, le=10_000)
    hold_rehold_cooldown_seconds: int = Field(60, ge=0, le=86_400)
    admin_token: str | None = Field(None, min_length=16)
    # None: seed the in-memory default only; true also seeds a file or PostgreSQL database.
    seed_demo_data: bool | None = None
    # Lifetime of tokens issued from now on; None: they work until revoked.
    token_ttl_days: int | None = Field(None, ge=1, le=36_500)
    # How long a SQLite writer waits for another process's write lock before giving up (503).
    # The worker's event loop waits with it, so keep it short (see docs/performance.md#sqlite-on-the-event-loop).
    sqlite_busy_timeout_seconds: float = Field(5.0, gt=0)
    # PostgreSQL connection pool, per worker process; the worker's thread pool is sized to it.
    # An overflow connection is opened for one use and closed after it (a new PostgreSQL backend
    # each time under load), so none by default: the pool's connections stay open and prepared.
    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(0, ge=0)
    db_pool_timeout_seconds: float = Field(30.0, gt=0)
    # PostgreSQL: connections per worker, beside the pool, for the reads answered on the event
    # loop (a board's log check, a hold's refusal read, a token check: fastread.py); 0 sends them
    # through the pool.
    db_fast_read_connections: int = Field(4, ge=0)
    # PostgreSQL, per connection: a statement waiting this long for a row lock, or running this
    # long, is cancelled and its request is a 503 DATABASE_BUSY, rather than holding a pooled
    # connection until the client has given up and then committing anyway. 0 turns one off.
    db_lock_timeout_seconds: float = Field(5.0, ge=0)
    db_statement_timeout_seconds: float = Field(10.0, ge=0)
    # PostgreSQL: how long opening a connection may take before the request is a 503.
    db_connect_timeout_seconds: int = Field(5, ge=1)
    # How long a response to a request with an Idempotency-Key is kept for its retries.
    idempotency_key_ttl_seconds: int = Field(86_400, ge=60)
    # The change log (live board, hold histories): events older than this are pruned by writes.
    event_retention_seconds: int = Field(7 * 86_400, ge=60)
    # Live stream: heartbeat comment interval; how often a SQLite file is checked for other
    # processes' writes (PostgreSQL is woken by NOTIFY and checks this often as a safety net x20).
    stream_heartbeat_seconds: float = Field(15.0, gt=0)
    stream_poll_seconds: float = Field(0.05, gt=0)
    # Rate limits in the `limits` notation ("20/minute", "5/second;100/hour"); empty switches one off.
    rate_limit_signups: str = "20/minute"  # POST /users, per client address
    rate_limit_holds: str = "120/minute"  # POST /holds, per user
    # Where the counters live: memory:// is per process; redis://host:6379/0 shares them between workers and hosts.
    rate_limit_storage_url: str = "memory://"
    # Comma-separated origins allowed to call the API from a browser ("*" for any); empty sends no CORS headers.
    cors_allow_origins: str = ""
    # One JSON line per request on the "booking.access" logger (stdout unless logging is configured).
    access_log: bool = True

    @field_validator("rate_limit_signups", "rate_limit_holds")
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_many(value)  # a ValueError names the string it could not read
        return value

    @property
    def cors_origins(self) -> list[str]:
        """CORS_ALLOW_ORIGINS as a list (empty: no cross-origin access)."""
        return [origin.strip() for origin in self.cors_allow_origins.split(",") if origin.strip()]

    @property
    def token_ttl(self) -> timedelta | None:
        """How long a newly issued token works, or None for no expiry."""
        return None if self.token_ttl_days is None else timedelta(days=self.token_ttl_days)


@lru_cache
def get_settings() -> Settings:
    """Return the process-wide settings, read from the environment once."""
    return Settings()
