"""When a photo was taken, as seconds: what orders a capture and spaces its frames.

Photo sets write times three ways: Mapillary's API and the synthetic cities as epoch
milliseconds (a number), imports and EXIF as ISO 8601 text (``2026-05-01T14:03:22.250``, with or
without a UTC offset). A capture is fused by the differences between its frames' times, so a
time only has to be consistent within one capture: camera local time without a zone is read as
if it were UTC, which moves every frame of the capture alike.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from zoomloc.core.errors import InputError

EPOCH_MS_ABOVE = 1e11  # a number above this is epoch milliseconds (1973 on), below it epoch seconds


def capture_seconds(value: object, where: str | None = None) -> float | None:
    """Seconds since the epoch of one ``captured_at`` value; None when it is missing (empty, NaN).

    A number is epoch milliseconds (above :data:`EPOCH_MS_ABOVE`) or seconds; a text, an
    ISO 8601 date and time or such a number. Anything else is one line naming ``where`` (the
    file, or the file and its line).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, datetime):
        return _seconds(value)
    if isinstance(value, int | float):
        return _number(float(value), value, where)
    text = str(value).strip()
    if not text:
        return None
    try:
        return _number(float(text), text, where)
    except ValueError:
        pass
    try:
        return _seconds(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise InputError(f"captured_at {text!r} is neither an ISO 8601 time nor epoch milliseconds", where) from None


def _number(number: float, shown: object, where: str | None) -> float:
    if not math.isfinite(number) or number < 0:
        raise InputError(f"captured_at {shown!r} is not a time", where)
    return number / 1000 if number > EPOCH_MS_ABOVE else number


def _seconds(t: datetime) -> float:
    """POSIX seconds; a time without a zone counts as UTC (only differences within a capture matter)."""
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp()
