"""Where a photo was taken, from its EXIF GPS tags (read with Pillow).

Cameras and phones write the position as degrees/minutes/seconds rationals plus N/S and E/W
reference letters, and often write them badly: zero denominators, missing references, a
0°N 0°E placeholder when there was no fix. :func:`read_gps` turns every such case into one of
two exceptions so that an import can skip the photo with a reason instead of placing it at a
wrong spot; it never guesses a hemisphere.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from PIL import Image
from PIL.ExifTags import GPS, IFD, Base

# Pillow's EXIF parser raises any of these on malformed EXIF blocks.
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, SyntaxError, struct.error)


class NoGpsError(ValueError):
    """The photo carries no usable GPS position (no tags, or the 0°N 0°E no-fix placeholder)."""


class CorruptExifError(ValueError):
    """The photo has EXIF that cannot be parsed, or GPS tags with impossible values."""


@dataclass(frozen=True)
class GpsFix:
    """A photo's position (WGS84 degrees) and what else EXIF says about the shot."""

    lon: float
    lat: float
    heading_deg: float | None  # GPSImgDirection, clockwise from north (true or magnetic, as written)
    captured_at: str | None  # DateTimeOriginal as ISO 8601, camera local time


def read_gps(image: Image.Image) -> GpsFix:
    """The GPS fix of an opened image; raises :class:`NoGpsError` or :class:`CorruptExifError`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif = image.getexif()
            gps = exif.get_ifd(IFD.GPSInfo)
            exif_ifd = exif.get_ifd(IFD.Exif)
        except _PARSE_ERRORS as exc:
            raise CorruptExifError(f"EXIF cannot be parsed ({exc})") from None
    if GPS.GPSLatitude not in gps or GPS.GPSLongitude not in gps:
        if caught:
            # Pillow only warns on a damaged block; the GPS tags may be what was lost.
            raise CorruptExifError(f"EXIF is damaged ({caught[0].message})")
        raise NoGpsError("no GPS position in EXIF")
    lat = _signed_degrees(gps[GPS.GPSLatitude], gps.get(GPS.GPSLatitudeRef), "NS", 90.0)
    lon = _signed_degrees(gps[GPS.GPSLongitude], gps.get(GPS.GPSLongitudeRef), "EW", 180.0)
    if lat == 0.0 and lon == 0.0:
        raise NoGpsError("GPS position is 0°N 0°E, the no-fix placeholder")
    return GpsFix(
        lon=lon,
        lat=lat,
        heading_deg=_heading(gps.get(GPS.GPSImgDirection)),
        captured_at=_iso_time(exif_ifd.get(Base.DateTimeOriginal) or exif.get(Base.DateTime)),
    )


def _signed_degrees(value, ref, letters: str, limit: float) -> float:
    """Decimal degrees from 1-3 (degree, minute, second) rationals and a reference letter.

    ``letters`` is the positive then the negative letter ("NS" or "EW"). A missing or unknown
    reference is an error: guessing would put the photo in the wrong hemisphere.
    """
    parts = _floats(value if isinstance(value, (tuple, list)) else (value,))
    if parts is None or not 1 <= len(parts) <= 3 or any(p < 0 or not math.isfinite(p) for p in parts):
        raise CorruptExifError(f"GPS coordinate {value!r} is not 1-3 finite non-negative numbers")
    degrees = sum(p / 60**i for i, p in enumerate(parts))
    letter = _text(ref).strip().upper()
    if len(letter) != 1 or letter not in letters:
        raise CorruptExifError(f"GPS reference {ref!r} is not one of {' '.join(letters)}")
    if degrees > limit:
        raise CorruptExifError(f"GPS coordinate {degrees:.6f}{letter} is beyond {limit:g}°")
    return -degrees if letter == letters[1] else degrees


def _heading(value) -> float | None:
    """GPSImgDirection in [0, 360), or None when absent or malformed (the position stays usable)."""
    parts = _floats((value,))
    return None if parts is None or not math.isfinite(parts[0]) else parts[0] % 360.0


def _floats(values: Sequence) -> list[float] | None:
    """``values`` as floats (a zero-denominator rational becomes NaN), or None if not numbers."""
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").rstrip("\x00")
    return "" if value is None else str(value).rstrip("\x00")


def _iso_time(value) -> str | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" as ISO 8601, or None when absent or malformed."""
    try:
        return datetime.strptime(_text(value).strip(), "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None
