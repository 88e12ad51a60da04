"""The one time seam: every expiry decision and timestamp reads `utc_now()`."""

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)
