"""A user's photos as captures: which photos were taken in one go, in what order, how far apart.

``zoomloc localize PHOTOS... --track`` localizes a dashcam run or a phone walk as a whole, and
the fusion needs each capture's photos in the order they were taken and the seconds between
them. Those come from the photos' capture times and capture (``sequence_id``) in a records file
(a city's ``streetview/metadata.csv``, a Mapillary-style CSV or GeoJSON), else from each photo's
EXIF time; a capture without times is taken in the order given, ``--interval`` seconds apart.
Positions, in a records file or in EXIF, are never read here: a track must be localized from
its images alone.

Every doubt is an :class:`~zoomloc.core.errors.InputError` naming the photo or the file, not a
guess: a photo placed at the wrong moment pulls its neighbours along the wrong street.

This module is on the query path and imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from zoomloc.core.errors import InputError
from zoomloc.core.times import capture_seconds

if TYPE_CHECKING:
    from zoomloc.data.photos import Photo

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
GEOJSON_SUFFIXES = (".geojson", ".json")
ID_COLUMNS = ("image_id", "id")  # zoomloc's, Mapillary's
SEQUENCE_COLUMNS = ("sequence_id", "sequence")  # zoomloc's, Mapillary's
HEADING_COLUMNS = ("heading_deg", "compass_angle")  # zoomloc's, Mapillary's: degrees clockwise from north


def expand_photos(paths: Sequence[Path]) -> list[Path]:
    """The photos named on the command line: a file as given, a folder as its photos sorted by name.

    A folder is read flat (its subfolders may be other captures) and without hidden files (a
    copy from a Mac carries ``._name.jpg`` resource forks that are no images); a folder without
    photos is an error, since nothing in it would be localized.
    """
    photos: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                (p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and not p.name.startswith(".")),
                key=lambda p: p.name,
            )
            if not found:
                raise InputError(f"no photos ({', '.join('*' + s for s in PHOTO_SUFFIXES)}) in this folder", path)
            photos.extend(found)
        else:  # a file, or a path that is neither: reading it says why not, and a batch skips it (zoomloc localize)
            photos.append(path)
    return photos


def read_records(path: Path) -> pd.DataFrame:
    """The capture time, capture and compass heading of each photo in a records file, by ``image_id``.

    Columns ``image_id`` (str), ``captured_at_s`` (POSIX seconds, NaN when a row has none),
    ``sequence_id`` (str, "" when a row has none) and ``heading_deg`` (degrees, NaN when a row or the
    file has none). The file is a CSV (a city's metadata.csv) or a GeoJSON, with zoomloc's column names
    or Mapillary's (``id``, ``sequence``, ``compass_angle``); ids are read as text, so that Mapillary's
    16-digit ids and ids like ``0042`` match file names exactly.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table, unit, first = _read_csv(path), "line", 2  # line 1 is the header
    elif suffix in GEOJSON_SUFFIXES:
        table, unit, first = _read_geojson(path), "feature", 1
    else:
        raise InputError(f"records must be a CSV or GeoJSON ({', '.join(('.csv',) + GEOJSON_SUFFIXES)})", path)
    id_column = next((c for c in ID_COLUMNS if c in table.columns), None)
    sequence_column = next((c for c in SEQUENCE_COLUMNS if c in table.columns), None)
    if id_column is None:
        raise InputError("missing column image_id (or Mapillary's id)", path)
    if "captured_at" not in table.columns and sequence_column is None:
        raise InputError("a track needs a captured_at or a sequence_id (or Mapillary's sequence) column; this file has neither", path)
    ids = [_text(v) for v in table[id_column]]
    first_seen: dict[str, int] = {}
    for n, image_id in enumerate(ids, start=first):
        if not image_id:
            raise InputError(f"{unit} {n}: no {id_column}", path)
        if image_id in first_seen:
            raise InputError(f"{unit} {n}: {id_column} {image_id!r} again (first on {unit} {first_seen[image_id]})", path)
        first_seen[image_id] = n
    times = np.full(len(ids), np.nan)
    if "captured_at" in table.columns:
        for i, value in enumerate(table["captured_at"]):
            seconds = capture_seconds(None if _is_missing(value) else value, f"{path}: {unit} {i + first}")
            times[i] = np.nan if seconds is None else seconds
    sequences = [""] * len(ids) if sequence_column is None else [_text(v) for v in table[sequence_column]]
    headings = np.full(len(ids), np.nan)
    heading_column = next((c for c in HEADING_COLUMNS if c in table.columns), None)
    if heading_column is not None:
        for i, value in enumerate(table[heading_column]):
            try:
                headings[i] = np.nan if _is_missing(value) else float(value)
            except ValueError:
                raise InputError(f"{unit} {i + first}: {heading_column} {value!r} is no compass angle in degrees", path) from None
    return pd.DataFrame({"image_id": ids, "captured_at_s": times, "sequence_id": sequences, "heading_deg": headings})


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell as text ("" when empty): numbers are left to :func:`capture_seconds`, ids stay ids."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable CSV ({str(exc).splitlines()[0]})", path) from None


def _read_geojson(path: Path) -> pd.DataFrame:
    """The features' properties; times as the text written (GDAL would otherwise turn offsets into UTC or drop them)."""
    from pyogrio import read_dataframe
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        return read_dataframe(path, read_geometry=False, datetime_as_string=True)
    except (DataSourceError, DataLayerError) as exc:
        raise InputError(f"not a readable GeoJSON ({str(exc).splitlines()[0]})", path) from None


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _text(value: object) -> str:
    """An id as text; a GeoJSON reader gives numeric ids as floats in a column that has nulls."""
    if _is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def photo_times(
    photos: Sequence[Photo], records: pd.DataFrame | None = None, records_path: str | Path | None = None
) -> tuple[list[float | None], list[str | None]]:
    """Each photo's capture time (POSIX seconds, None when unknown) and capture (``sequence_id``).

    With ``records`` (from :func:`read_records`, read from ``records_path``), both come from the
    row whose ``image_id`` is the photo's file stem, and EXIF is not read: the records are what
    the user chose to trust. Without, both come from EXIF: the time, and the sequence where the
    camera app wrote one (Mapillary's; else every photo is of one capture). A photo missing from
    the records, or whose EXIF time is written but unreadable, is refused: either would leave it
    to be placed by a guess.
    """
    if records is None:
        times: list[float | None] = []
        for photo in photos:
            if photo.time_problem:
                raise InputError(f"its capture time cannot be read: {photo.time_problem}", photo.path)
            times.append(capture_seconds(photo.captured_at, str(photo.path)))
        return times, [photo.sequence_id for photo in photos]
    rows = dict(zip(records["image_id"], zip(records["captured_at_s"], records["sequence_id"])))
    times, sequences = [], []
    for photo in photos:
        row = rows.get(photo.path.stem)
        if row is None:
            source = f"the records file {records_path}" if records_path is not None else "the records"
            raise InputError(f"no row with image_id {photo.path.stem!r} in {source}", photo.path)
        seconds, sequence = row
        times.append(None if math.isnan(seconds) else float(seconds))
        sequences.append(sequence or None)
    return times, sequences


def photo_headings(photos: Sequence[Photo], records: pd.DataFrame | None = None) -> list[float]:
    """Each photo's compass heading (degrees clockwise from north, NaN when unknown): the ``records``' row of its
    file stem where given (what the user chose to trust, as for the times; :func:`photo_times` has refused a
    photo without one), else its EXIF ``GPSImgDirection``."""
    if records is None:
        return [math.nan if photo.heading_deg is None else photo.heading_deg for photo in photos]
    rows = dict(zip(records["image_id"], records["heading_deg"]))
    return [float(rows[photo.path.stem]) for photo in photos]


@dataclass(frozen=True)
class Capture:
    """The photos of one capture in the order they were taken, and when, relative to the first.

    ``indices`` index the photo list given to :func:`group_captures`; ``times_s[i]`` belongs to
    photo ``indices[i]`` (read-only, non-decreasing, ``times_s[0] == 0``).
    """

    name: str  # the sequence_id, or "capture" ("capture 2", … if a sequence_id is already so called)
    indices: tuple[int, ...]
    times_s: np.ndarray


def group_captures(
    names: Sequence[str],
    times_s: Sequence[float | None],
    sequence_ids: Sequence[str | None],
    *,
    interval_s: float | None = None,
    untimed: Literal["refuse", "order"] = "refuse",
) -> list[Capture]:
    """The photos grouped into captures, each ordered by time; captures in order of first appearance.

    Photos with the same ``sequence_id`` are one capture; those without one, one capture together.
    Within a capture, photos are sorted by time, equal times keeping the given order (a burst
    written to the second). A capture none of whose photos has a time is taken in the given order,
    ``interval_s`` apart (a lone photo needs neither). A capture where only some photos have a
    time is refused, unless ``untimed="order"``: each untimed photo then keeps its place in the
    given order, its time interpolated between the nearest timed photos before and after it,
    and beyond the first or last one, extrapolated by ``interval_s`` (else by the capture's
    median step per photo). ``names`` are the photos' names for the messages.
    """
    if not len(names) == len(times_s) == len(sequence_ids):
        raise ValueError(f"{len(names)} names, {len(times_s)} times and {len(sequence_ids)} sequence_ids")
    if untimed not in ("refuse", "order"):
        raise ValueError(f"untimed must be 'refuse' or 'order', got {untimed!r}")
    if interval_s is not None and not (math.isfinite(interval_s) and interval_s > 0):
        raise InputError(f"--interval must be a positive number of seconds, got {interval_s:g}")
    members: dict[str | None, list[int]] = {}
    for i, sequence_id in enumerate(sequence_ids):
        members.setdefault(sequence_id.strip() if sequence_id and sequence_id.strip() else None, []).append(i)
    unnamed = _free_name({s for s in members if s is not None})
    captures = []
    for sequence_id, indices in members.items():
        name = unnamed if sequence_id is None else sequence_id
        times = np.array([np.nan if times_s[i] is None else float(times_s[i]) for i in indices])
        times = _complete_times(name, times, [names[i] for i in indices], interval_s, untimed)
        order = np.argsort(times, kind="stable")
        relative = times[order] - times[order[0]]
        relative.setflags(write=False)
        captures.append(Capture(name, tuple(indices[k] for k in order), relative))
    return captures


def _free_name(taken: set[str]) -> str:
    """ "capture", or "capture 2", … when a sequence_id is already so called: each capture's name is its own."""
    name, n = "capture", 1
    while name in taken:
        n += 1
        name = f"capture {n}"
    return name


def _complete_times(name: str, times: np.ndarray, names: list[str], interval_s: float | None, untimed: str) -> np.ndarray:
    """A time for every photo of one capture (NaN where unknown, in the given order), or the error why not."""
    missing = np.isnan(times)
    if not missing.any():
        return times
    if missing.all():
        if interval_s is None and len(times) > 1:
            raise InputError(
                f"no photo of capture {name!r} has a capture time: give --interval SECONDS (the time between "
                "consecutive photos, taken in the order given) or their times (EXIF DateTimeOriginal or a records file)"
            )
        return np.arange(len(times)) * (interval_s or 0.0)
    if untimed == "refuse":
        raise InputError(
            f"no capture time, while other photos of capture {name!r} have one (--untimed order places it by its order among them)",
            names[int(np.flatnonzero(missing)[0])],
        )
    known = np.flatnonzero(~missing)
    if interval_s is None:
        if len(known) < 2:
            raise InputError(f"only one photo of capture {name!r} has a capture time: give --interval SECONDS to place the others")
        interval_s = float(np.median(np.abs(np.diff(times[known])) / np.diff(known)))
    position = np.arange(len(times))
    filled = np.interp(position, known, times[known])
    before, after = position < known[0], position > known[-1]
    filled[before] = times[known[0]] - interval_s * (known[0] - position[before])
    filled[after] = times[known[-1]] + interval_s * (position[after] - known[-1])
    return filled
