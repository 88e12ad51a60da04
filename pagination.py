"""Opaque keyset cursors: (timestamp, id) of the last item of a page."""

import base64
import binascii
import uuid
from datetime import UTC, datetime

from errors import InvalidInput

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


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
        raise InvalidInput("INVALID_CURSOR", "The cursor is not one this API returned.") from exc
