"""Localizations as files GIS tools read: GeoJSON (QGIS, geopandas, kepler.gl) and CSV (a spreadsheet).

One row per photo, at the answer given for it: a photo of a localized capture (a
:class:`~zoomloc.inference.localization.Track`) at its *fused* position, with its own answer beside
it (``photo_lat``/``photo_lon``/``photo_probability``); a photo alone at its own answer. The GeoJSON
adds one LineString per capture of two photos or more, its fused points in capture order::

    write_geojson("out.geojson", localizations, tracks)   # EPSG:4326, lon/lat (RFC 7946)
    write_csv("out.csv", localizations, tracks)

Both are written atomically (:mod:`zoomloc.core.atomic`); a path that cannot be written is one
line (:class:`~zoomloc.core.errors.ZoomlocError`) and leaves no file. A missing folder is created,
as for every output of zoomloc.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from shapely.geometry import LineString, Point, mapping

from zoomloc.core.atomic import write_text
from zoomloc.core.errors import ZoomlocError
from zoomloc.geo.grid import geodesic_m
from zoomloc.inference.localization import Localization, Track

CSV_COLUMNS = (
    "image",
    "capture",
    "time_s",
    "lat",
    "lon",
    "probability",
    "fused",
    "photo_lat",
    "photo_lon",
    "photo_probability",
    "outlier",
    "error_m",
    "photo_error_m",
    "warnings",
)


def photo_rows(localizations: Sequence[Localization], tracks: Sequence[Track] = ()) -> list[dict[str, Any]]:
    """Every photo once, as the properties both files hold (plain Python values, None where unknown).

    The photos of ``localizations`` in their order, then those of ``tracks`` not among them: a
    localization that is a track's photo (equal to one of ``track.photos``) is written as the
    track's, at its fused point, wherever it is listed.
    """
    in_track = {photo: (track, i) for track in tracks for i, photo in enumerate(track.photos)}
    listed = set(localizations)
    rows = [_row(photo, *in_track.get(photo, (None, None))) for photo in localizations]
    return rows + [_row(photo, *where) for photo, where in in_track.items() if photo not in listed]


def feature_collection(localizations: Sequence[Localization], tracks: Sequence[Track] = ()) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (EPSG:4326, lon/lat): one Point per photo (``kind: "photo"``), at the
    fused position for a photo of a track, and one LineString per track of two photos or more
    (``kind: "track"``, its fused points in capture order). See :data:`CSV_COLUMNS` and
    :func:`photo_rows` for the properties; ``candidates`` is a JSON string of ``[[lat, lon, probability], …]``
    (OGR formats hold no nested lists; a string survives every reader)."""
    features = []
    for row in photo_rows(localizations, tracks):
        geometry = mapping(Point(row.pop("lon"), row.pop("lat")))
        features.append({"type": "Feature", "geometry": _plain(geometry), "properties": {"kind": "photo", **row}})
    for track in tracks:
        if len(track.points) < 2:
            continue
        line = LineString([(_float(p.lon), _float(p.lat)) for p in track.points])
        properties = {"kind": "track", "capture": track.capture, "photos": len(track.points)}
        features.append({"type": "Feature", "geometry": _plain(mapping(line)), "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, localizations: Sequence[Localization], tracks: Sequence[Track] = ()) -> None:
    """Write :func:`feature_collection` to ``path`` atomically."""
    text = json.dumps(feature_collection(localizations, tracks), ensure_ascii=False, allow_nan=False)
    write_output(path, text + "\n", "GeoJSON")


def write_csv(path: str | os.PathLike, localizations: Sequence[Localization], tracks: Sequence[Track] = ()) -> None:
    """Write one row per photo (:data:`CSV_COLUMNS`; empty where unknown, booleans as true/false) to ``path`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in photo_rows(localizations, tracks):
        writer.writerow({key: _csv_value(value) for key, value in row.items()})
    write_output(path, buffer.getvalue(), "CSV")


def write_output(path: str | os.PathLike, text: str, what: str) -> None:
    """:func:`~zoomloc.core.atomic.write_text`, with a path that cannot be written (a folder that is a
    file, no permission, a full disk) reported as one line naming it and ``what``; nothing is left behind."""
    try:
        write_text(path, text)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = exc.filename
        if isinstance(where, str) and where != os.fspath(path) and not where.endswith(".partial"):
            reason += f": {where}"  # a folder on the way, not the file (nor its temporary)
        raise ZoomlocError(f"cannot write the {what}: {reason}".replace("\n", " "), path) from None


def _row(photo: Localization, track: Track | None, i: int | None) -> dict[str, Any]:
    own = {"lat": _float(photo.lat), "lon": _float(photo.lon), "probability": _float(photo.probability)}
    row: dict[str, Any] = {"image": photo.image, "capture": None, "time_s": None, **own, "fused": False}
    row |= {f"photo_{key}": value for key, value in own.items()}
    row |= {"candidate": None, "outlier": False, "error_m": _float(photo.error_m), "photo_error_m": _float(photo.error_m)}
    if track is not None:
        point = track.points[i]
        row |= {"capture": track.capture, "time_s": _float(point.time_s), "fused": True, "candidate": _int(point.candidate)}
        row |= {"lat": _float(point.lat), "lon": _float(point.lon), "probability": _float(point.probability)}
        row["outlier"] = point.candidate is None
        row["error_m"] = (
            None
            if photo.true_lon is None or photo.true_lat is None
            else _float(geodesic_m(point.lon, point.lat, photo.true_lon, photo.true_lat))
        )
    row["cell_size_m"] = _float(photo.cell_size_m)
    row["warnings"] = "; ".join(photo.warnings)
    row["candidates"] = json.dumps([[_float(c.lat), _float(c.lon), _float(c.probability)] for c in photo.candidates])
    return row


def _float(value) -> float | None:
    """A plain float (no numpy scalar in the JSON); None for a missing or non-finite value (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _plain(geometry: dict[str, Any]) -> dict[str, Any]:
    """shapely's ``mapping`` with lists for its tuples: the dict is what ``json.loads`` of the file gives."""
    return json.loads(json.dumps(geometry))


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _int(value) -> int | None:
    return None if value is None else int(value)
