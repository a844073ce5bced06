"""Import GPS-tagged photos into a city directory (``zoomloc import-photos``).

Two kinds of source:

* **a folder** of JPEG/PNG photos (``*.jpg``, ``*.jpeg``, ``*.png``, not recursive): the position
  and heading come from EXIF GPS (:mod:`zoomloc.core.exif`); the image_id is the file stem with
  every character other than letters, digits, ``_ - .`` replaced by ``_``.
* **a CSV or GeoJSON of Mapillary-style records**: ``id``; ``lon`` and ``lat`` columns (CSV) or
  a point geometry (GeoJSON, any CRS); optional ``compass_angle`` (degrees clockwise from
  north), ``captured_at`` (epoch milliseconds, as Mapillary's API gives it, or a text kept as
  is) and ``sequence``. A record's image is ``<id>.jpg``, ``<id>.jpeg`` or ``<id>.png`` in an
  ``images/`` folder beside the file, or else beside the file itself.

Each photo is decoded in full before it is accepted, so a truncated file is caught here and
not in the middle of training. JPEGs are stored byte for byte (or hard-linked), other formats
re-encoded as JPEG. Photos that cannot be used are skipped with a reason and the import goes
on; only an import that keeps nothing is an error. Images are written before metadata.csv, so
an interrupted run leaves at worst unreferenced images, never rows without an image.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from PIL import Image
from pyogrio.errors import DataSourceError

from zoomloc.core.atomic import atomic_path
from zoomloc.core.errors import InputError
from zoomloc.core.exif import CorruptExifError, GpsFix, NoGpsError, read_gps
from zoomloc.geo.citydir import METADATA_COLUMNS, OPTIONAL_COLUMNS, CityDir, check_image_id, read_metadata_csv
from zoomloc.geo.grid import WGS84
from zoomloc.geo.raster import open_source

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
RECORD_SUFFIXES = (".csv", ".geojson", ".json")
JPEG_QUALITY = 95  # for photos re-encoded from PNG
_SHOWN_SKIPS = 20  # skipped photos listed one by one in the summary
# What Pillow raises on a file it cannot identify or decode (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


class SkipReason(StrEnum):
    """Why a photo was not imported; the value reads after a count ("3 without GPS")."""

    UNSAFE_ID = "with an unsafe id"
    DUPLICATE = "with a duplicate id"
    NO_IMAGE = "without an image file"
    NO_POSITION = "without a valid position"
    UNREADABLE = "unreadable"
    TOO_LARGE = "over Pillow's decompression-bomb limit"
    NO_GPS = "without GPS"
    CORRUPT_EXIF = "with corrupt EXIF"
    OUTSIDE = "outside the satellite coverage"


@dataclass(frozen=True)
class Skip:
    """One photo or record that was not imported."""

    name: str  # the file name or record id, as in the source
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class ImportSummary:
    """What one import did: the ids added and the photos skipped."""

    src: Path
    metadata_csv: Path
    imported: tuple[str, ...]
    skipped: tuple[Skip, ...]
    total: int  # rows of metadata.csv after the import

    def skip_counts(self) -> str:
        """Skips per reason, e.g. ``"41 without GPS, 2 with corrupt EXIF"``."""
        counts = Counter(s.reason for s in self.skipped)
        return ", ".join(f"{counts[r]} {r.value}" for r in SkipReason if counts[r])

    def describe(self) -> str:
        lines = [f"imported {len(self.imported)} photo(s) from {self.src} into {self.metadata_csv} ({self.total} in all)"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}: {self.skip_counts()}")
            lines += [f"  {s.name}: {s.detail}" for s in self.skipped[:_SHOWN_SKIPS]]
            if len(self.skipped) > _SHOWN_SKIPS:
                lines.append(f"  ... and {len(self.skipped) - _SHOWN_SKIPS} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Candidate:
    """A photo a source offers for import."""

    name: str
    image_id: str
    path: Path
    fix: GpsFix | None  # None: read it from the photo's EXIF
    sequence_id: str | None = None


class _Skipped(Exception):
    """Raised while importing one photo; the import records it as a :class:`Skip` and goes on."""

    def __init__(self, reason: SkipReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def import_photos(src: str | os.PathLike, city: str | os.PathLike, *, link: bool = False) -> ImportSummary:
    """Import the photos of ``src`` (a folder or a CSV/GeoJSON of records) into ``city``.

    New ids are appended to an existing metadata.csv, whose rows are kept verbatim; an id that
    is already there is skipped as a duplicate. With ``link``, JPEGs are hard-linked instead of
    copied. Raises :class:`InputError` when nothing is imported.
    """
    src, city = Path(src), CityDir(city)
    if src.is_dir():
        offered = _folder_candidates(src)
    elif src.is_file():
        offered = _record_candidates(src)
    else:
        raise InputError("no such file or folder", src)
    existing = _existing_metadata(city)
    footprint = satellite_footprint(city)
    seen = set(existing["image_id"])
    rows: list[dict[str, str]] = []
    skipped: list[Skip] = []
    for item in offered:
        if isinstance(item, Skip):
            skipped.append(item)
            continue
        try:
            rows.append(_import_one(item, city, seen, footprint, link))
        except _Skipped as skip:
            skipped.append(Skip(item.name, skip.reason, skip.detail))
    summary = ImportSummary(src, city.metadata_csv, tuple(r["image_id"] for r in rows), tuple(skipped), len(existing) + len(rows))
    if not rows:
        # Name one skipped photo and its reason: the summary that lists them all is not printed.
        first = f"; first: {skipped[0].name}: {skipped[0].detail}" if skipped else ""
        raise InputError(f"no photo imported ({summary.skip_counts() or 'it holds no record'}){first}", src)
    _write_metadata(city.metadata_csv, existing, rows)
    return summary


def satellite_footprint(city: CityDir) -> shapely.Geometry | None:
    """The union of the footprints of ``satellite/*.tif`` in lon/lat; None without imagery.

    Footprints are the rasters' pixel-corner polygons, densified and reprojected (the same
    outlines the pyramid uses), not their lon/lat bounding boxes: a UTM tile's box in lon/lat
    overhangs its corners.
    """
    if not city.satellite_dir.is_dir():
        return None
    try:
        files = city.satellite_files()
    except InputError:  # an empty satellite/ folder: no imagery to check against yet
        return None
    return shapely.union_all([open_source(path).footprint(WGS84) for path in files])


# ----------------------------------------------------------------------------- sources
def _folder_candidates(src: Path) -> list[_Candidate | Skip]:
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"holds no photo ({', '.join('*' + s for s in PHOTO_SUFFIXES)})", src)
    out: list[_Candidate | Skip] = []
    for p in files:
        image_id = safe_id(p.stem)
        out.append(_id_skip(p.name, image_id) or _Candidate(p.name, image_id, p, None))
    return out


def safe_id(stem: str) -> str:
    """``stem`` made a safe image_id: other characters become ``_``, ``..`` becomes ``.``."""
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.\-]", "_", stem))
    return text if re.match(r"[A-Za-z0-9_]", text) else "_" + text


def _record_candidates(path: Path) -> list[_Candidate | Skip]:
    out: list[_Candidate | Skip] = []
    for rec in _read_records(path).itertuples(index=False):
        image_id = _id_text(rec.id)
        lon, lat = _number(rec.lon), _number(rec.lat)
        # The id is checked before it names a file to look for: "../x" must not be looked up.
        if skip := _id_skip(image_id, image_id):
            out.append(skip)
        elif lon is None or lat is None or not (abs(lon) <= 180 and abs(lat) <= 90):
            out.append(Skip(image_id, SkipReason.NO_POSITION, f"lon/lat ({rec.lon}, {rec.lat}) is not a position"))
        elif (image := _record_image(path.parent, image_id)) is None:
            out.append(Skip(image_id, SkipReason.NO_IMAGE, f"no {image_id}.jpg/.jpeg/.png in images/ or beside {path.name}"))
        else:
            heading = _number(rec.compass_angle)
            fix = GpsFix(lon, lat, None if heading is None else heading % 360.0, _captured_at(rec.captured_at))
            out.append(_Candidate(image_id, image_id, image, fix, _id_text(rec.sequence) or None))
    return out


def _read_records(path: Path) -> pd.DataFrame:
    """The records as a DataFrame with columns id, lon, lat, compass_angle, captured_at, sequence."""
    suffix = path.suffix.lower()
    if suffix not in RECORD_SUFFIXES:
        raise InputError(f"not a folder, CSV or GeoJSON ({', '.join(RECORD_SUFFIXES)})", path)
    if suffix == ".csv":
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"not a readable CSV ({str(exc).splitlines()[0]})", path) from None
        required = ("id", "lon", "lat")
    else:
        try:
            gdf = gpd.read_file(path)
        except DataSourceError as exc:
            raise InputError(f"not a readable GeoJSON ({str(exc).splitlines()[0]})", path) from None
        if gdf.crs is not None and not gdf.crs.equals("EPSG:4326"):
            gdf = gdf.to_crs("EPSG:4326")
        points = (gdf.geometry.geom_type == "Point") & ~gdf.geometry.is_empty
        df = pd.DataFrame(gdf.drop(columns=gdf.geometry.name))
        df["lon"], df["lat"] = np.nan, np.nan
        df.loc[points, "lon"] = shapely.get_x(gdf.geometry[points].values)
        df.loc[points, "lat"] = shapely.get_y(gdf.geometry[points].values)
        required = ("id",)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"missing required column(s) {', '.join(missing)}", path)
    return df.reindex(columns=["id", "lon", "lat", "compass_angle", "captured_at", "sequence"])


def _record_image(folder: Path, image_id: str) -> Path | None:
    for base in (folder / "images", folder):
        for suffix in PHOTO_SUFFIXES + tuple(s.upper() for s in PHOTO_SUFFIXES):
            if (base / f"{image_id}{suffix}").is_file():
                return base / f"{image_id}{suffix}"
    return None


def _id_skip(name: str, image_id: str) -> Skip | None:
    problem = check_image_id(image_id)
    return Skip(name, SkipReason.UNSAFE_ID, problem) if problem else None


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _id_text(value) -> str:
    """A record id as text; GeoJSON readers turn numeric ids into floats when some are null."""
    if _is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _captured_at(value) -> str | None:
    """Epoch milliseconds (Mapillary) as ISO 8601 UTC; any other text is kept as is."""
    if _is_missing(value):
        return None
    millis = _number(value)
    if millis is None:
        return str(value).strip()
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------- one photo
def _import_one(c: _Candidate, city: CityDir, seen: set[str], footprint: shapely.Geometry | None, link: bool) -> dict[str, str]:
    """Check one photo, store its image and return its metadata row; raises :class:`_Skipped`."""
    if c.image_id in seen:
        raise _Skipped(SkipReason.DUPLICATE, f"image_id {c.image_id!r} is already imported")
    with _open_decoded(c.path) as image:
        fix = c.fix or _exif_fix(image)
        if footprint is not None and not shapely.intersects_xy(footprint, fix.lon, fix.lat):
            raise _Skipped(SkipReason.OUTSIDE, f"lon={fix.lon:.6f}, lat={fix.lat:.6f} is outside satellite/")
        _store(c.path, image, city.image_path(c.image_id), link)
    seen.add(c.image_id)
    return {
        "image_id": c.image_id,
        "lon": repr(fix.lon),
        "lat": repr(fix.lat),
        "heading_deg": "" if fix.heading_deg is None else repr(fix.heading_deg),
        "fov_deg": "",
        "captured_at": fix.captured_at or "",
        "sequence_id": c.sequence_id or "",
    }


def _open_decoded(path: Path) -> Image.Image:
    """``path`` opened and fully decoded; a decompression bomb is refused, not decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
            try:
                image.load()
            except BaseException:
                image.close()
                raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Skipped(SkipReason.TOO_LARGE, str(exc)) from None
        except _DECODE_ERRORS as exc:
            raise _Skipped(SkipReason.UNREADABLE, f"cannot decode the image ({exc})") from None
    return image


def _exif_fix(image: Image.Image) -> GpsFix:
    try:
        return read_gps(image)
    except NoGpsError as exc:
        raise _Skipped(SkipReason.NO_GPS, str(exc)) from None
    except CorruptExifError as exc:
        raise _Skipped(SkipReason.CORRUPT_EXIF, str(exc)) from None


def _store(src: Path, image: Image.Image, dst: Path, link: bool) -> None:
    """Write ``dst``: the JPEG's own bytes (copied or hard-linked), or ``image`` re-encoded."""
    with atomic_path(dst) as tmp:
        if image.format != "JPEG":
            image.convert("RGB").save(tmp, "JPEG", quality=JPEG_QUALITY)
        elif link:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError as exc:
                raise InputError(f"cannot hard-link into {dst.parent} ({exc.strerror}); import without --link", src) from None
        else:
            shutil.copyfile(src, tmp)


# ----------------------------------------------------------------------------- metadata.csv
def _existing_metadata(city: CityDir) -> pd.DataFrame:
    """The city's metadata.csv as text (validated first), or an empty table."""
    if not city.metadata_csv.exists():
        return pd.DataFrame(columns=list(METADATA_COLUMNS + OPTIONAL_COLUMNS), dtype=str)
    read_metadata_csv(city.metadata_csv)
    return pd.read_csv(city.metadata_csv, dtype=str, keep_default_na=False)


def _write_metadata(path: Path, existing: pd.DataFrame, rows: list[dict[str, str]]) -> None:
    columns = list(METADATA_COLUMNS + OPTIONAL_COLUMNS)
    columns += [c for c in existing.columns if c not in columns]
    frames = [f for f in (existing, pd.DataFrame(rows)) if len(f)]  # concat warns on empty frames
    table = pd.concat(frames, ignore_index=True).reindex(columns=columns).fillna("")
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
