"""Where a photo was taken, from its EXIF GPS tags (read with Pillow).

Cameras and phones write the position as degrees/minutes/seconds rationals plus N/S and E/W
reference letters, and often write them badly: zero denominators, missing references, a
0°N 0°E placeholder when there was no fix. :func:`read_gps` turns every such case into one of
two exceptions so that an import can skip the photo with a reason instead of placing it at a
wrong spot; it never guesses a hemisphere.

:func:`read_capture_time` reads when the photo was taken, which orders the frames of a capture;
a time that is written but cannot be read is an error too, never taken for a missing one.
"""

from __future__ import annotations

import json
import math
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

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


@dataclass(frozen=True)
class PhotoExif:
    """What a user's photo says of itself, from one reading of its EXIF.

    A photo is localized with or without these, so neither is an error here: ``gps`` is None
    without a usable fix, and ``time_problem`` says why a capture time that is written could not
    be read (a track cannot order the photo then; a single photo does not need its time).
    """

    gps: GpsFix | None
    captured_at: datetime | None
    time_problem: str | None
    sequence_id: str | None = None  # the capture, where the camera app writes it (Mapillary's MAPSequenceUUID)


@dataclass(frozen=True)
class _Tags:
    """The IFDs of one EXIF block, and Pillow's warning when the block is damaged."""

    base: Image.Exif
    exif: dict
    gps: dict
    damage: str | None


def read_photo_exif(image: Image.Image) -> PhotoExif:
    """The GPS fix and capture time of an opened image.

    Pillow caches an image's EXIF once parsed and does not raise or warn again, so a second
    reader of the same image would take a damaged block for a sound one; both are read here at once.
    """
    try:
        tags = _read_tags(image)
    except CorruptExifError as exc:
        return PhotoExif(None, None, str(exc))
    try:
        gps = _gps_fix(tags)
    except (NoGpsError, CorruptExifError):
        gps = None
    sequence = _mapillary(tags).get("MAPSequenceUUID")
    sequence = str(sequence).strip() or None if sequence is not None else None
    try:
        return PhotoExif(gps, _capture_time(tags), None, sequence)
    except CorruptExifError as exc:
        return PhotoExif(gps, None, str(exc), sequence)


def read_gps(image: Image.Image) -> GpsFix:
    """The GPS fix of an opened image; raises :class:`NoGpsError` or :class:`CorruptExifError`."""
    return _gps_fix(_read_tags(image))


def read_capture_time(image: Image.Image) -> datetime | None:
    """When an opened image was taken, or None when EXIF does not say; :class:`CorruptExifError`
    when it says so unreadably (see :func:`_capture_time`)."""
    return _capture_time(_read_tags(image))


def _read_tags(image: Image.Image) -> _Tags:
    """The image's EXIF; :class:`CorruptExifError` when Pillow cannot parse it at all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            exif = image.getexif()
            exif_ifd, gps = exif.get_ifd(IFD.Exif), exif.get_ifd(IFD.GPSInfo)
        except _PARSE_ERRORS as exc:
            raise CorruptExifError(f"EXIF cannot be parsed ({exc})") from None
    return _Tags(exif, exif_ifd, gps, str(caught[0].message) if caught else None)


def _gps_fix(tags: _Tags) -> GpsFix:
    gps = tags.gps
    if GPS.GPSLatitude not in gps or GPS.GPSLongitude not in gps:
        if tags.damage:
            # Pillow only warns on a damaged block; the GPS tags may be what was lost.
            raise CorruptExifError(f"EXIF is damaged ({tags.damage})")
        raise NoGpsError("no GPS position in EXIF")
    lat = _signed_degrees(gps[GPS.GPSLatitude], gps.get(GPS.GPSLatitudeRef), "NS", 90.0)
    lon = _signed_degrees(gps[GPS.GPSLongitude], gps.get(GPS.GPSLongitudeRef), "EW", 180.0)
    if lat == 0.0 and lon == 0.0:
        raise NoGpsError("GPS position is 0°N 0°E, the no-fix placeholder")
    return GpsFix(
        lon=lon,
        lat=lat,
        heading_deg=_heading(gps.get(GPS.GPSImgDirection)),
        captured_at=_iso_time(tags.exif.get(Base.DateTimeOriginal) or tags.base.get(Base.DateTime)),
    )


_OFFSET = re.compile(r"([+-])(\d\d):(\d\d)")  # an EXIF UTC offset, "+02:00"


def _capture_time(tags: _Tags) -> datetime | None:
    """``DateTimeOriginal`` (the shutter), else ``DateTime`` (last written, often the same), with
    the fraction of a second and the UTC offset EXIF 2.31 writes beside each: aware with an
    offset, naive without; else the Mapillary app's ``MAPCaptureTime`` (UTC, :func:`_mapillary`).

    Cameras without a set clock write blanks or zeros for "unknown", which is no time. Any other
    value that is not a time raises: read as missing, it would let a photo be placed by guess.
    """
    exif = tags.exif
    for name, value, subsec, offset in (
        ("DateTimeOriginal", exif.get(Base.DateTimeOriginal), exif.get(Base.SubsecTimeOriginal), exif.get(Base.OffsetTimeOriginal)),
        ("DateTime", tags.base.get(Base.DateTime), exif.get(Base.SubsecTime), exif.get(Base.OffsetTime)),
    ):
        text = _text(value).strip()
        if not text.strip(" :0"):
            continue
        try:
            when = datetime.strptime(text, "%Y:%m:%d %H:%M:%S")
        except ValueError:
            raise CorruptExifError(f"{name} {value!r} is not a YYYY:MM:DD HH:MM:SS time") from None
        fraction = _text(subsec).strip()
        if fraction:
            if not (fraction.isascii() and fraction.isdigit()):
                raise CorruptExifError(f"the fraction of a second {subsec!r} of {name} is not digits")
            when += timedelta(microseconds=int(fraction[:6].ljust(6, "0")))
        zone = _text(offset).strip()
        if zone.strip(" :"):
            match = _OFFSET.fullmatch(zone)
            if match is None or int(match[2]) > 23 or int(match[3]) > 59:
                raise CorruptExifError(f"the UTC offset {offset!r} of {name} is not like +02:00")
            sign = -1 if match[1] == "-" else 1
            when = when.replace(tzinfo=timezone(sign * timedelta(hours=int(match[2]), minutes=int(match[3]))))
        return when
    app_time = _mapillary(tags).get("MAPCaptureTime")
    if app_time is not None:
        try:
            return datetime.strptime(str(app_time).strip(), "%Y_%m_%d_%H_%M_%S_%f").replace(tzinfo=UTC)
        except ValueError:
            raise CorruptExifError(f"MAPCaptureTime {app_time!r} is not a YYYY_MM_DD_HH_MM_SS_mmm time") from None
    if tags.damage:
        raise CorruptExifError(f"EXIF is damaged ({tags.damage})")  # the time may be what was lost
    return None


def _mapillary(tags: _Tags) -> dict:
    """The JSON the Mapillary app writes as ImageDescription (capture time in UTC, sequence, compass), or {}.

    Its photos carry no EXIF date at all (OpenSfM's lund set): the app's own record is their only time.
    """
    text = _text(tags.base.get(Base.ImageDescription)).strip()
    if not text.startswith("{") or "MAP" not in text:
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


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
