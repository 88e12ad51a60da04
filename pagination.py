"""Keyset paging: fetch one row more than the page, cut, and an opaque cursor (timestamp, id) to go on."""

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from errors import Code, InvalidInput

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

T = TypeVar("T")


def encode_cursor(at: datetime, item_id: uuid.UUID) -> str:
    """Encode the sort key of the last item on a page."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{item_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Decode a cursor made by `encode_cursor`; anything else is a 422."""
    try:
        at, item_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError("naive cursor")
        return parsed.astimezone(UTC), uuid.UUID(item_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput(Code.INVALID_CURSOR, "The cursor is not one this API returned.") from exc


def fetch_limit(limit: int) -> int:
    """How many rows to fetch for a page of `limit`: the one extra says whether another page follows."""
    return limit + 1


def cut_page(
    rows: Sequence[T], limit: int, sort_key: Callable[[T], tuple[datetime, uuid.UUID]]
) -> tuple[Sequence[T], str | None]:
    """The page out of `fetch_limit(limit)` rows, and the cursor for the next page (None on the last)."""
    page = rows[:limit]
    return page, encode_cursor(*sort_key(page[-1])) if len(rows) > limit else None
