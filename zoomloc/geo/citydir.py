"""The city directory: the on-disk contract every zoomloc command reads and writes.

::

    CITY_DIR/
      satellite/*.tif                 one or more georeferenced GeoTIFFs, any CRS, and/or tile folders
                                      (a tiledwebmaps layout.yaml folder, xyz/{z}/{x}/{y}.png|jpg)
      streetview/images/<image_id>.jpg
      streetview/metadata.csv         image_id,lon,lat[,heading_deg,fov_deg,captured_at,sequence_id]
      split.csv                       image_id,split   (train|val|test; `zoomloc split`)
      split_areas.geojson             the areas of each split (`zoomloc split`)
      region.json                     the zoom grid a dataset fixes (`zoomloc import-jzi`); optional
      pyramid.h5                      (`zoomloc build-pyramid`)
      tiles/                          the tile folders' VRT mosaics (`zoomloc build-pyramid`)
      embeddings/                     view, street and trunk caches (zoomloc.models.embeddings, zoomloc.data.*_cache)

Commands accept a directory holding only the first three entries plus what they need; extra
columns in metadata.csv are kept and ignored. Validation lives here, once, so that every
command reports a bad row the same way: ``metadata.csv: line 7: lat 95.0 is out of range``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zoomloc.core.atomic import write_text
from zoomloc.core.errors import InputError
from zoomloc.geo.grid import ZoomGrid

METADATA_COLUMNS = ("image_id", "lon", "lat")
OPTIONAL_COLUMNS = ("heading_deg", "fov_deg", "captured_at", "sequence_id")
SPLITS = ("train", "val", "test")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def check_image_id(image_id: str) -> str | None:
    """Why ``image_id`` is not a safe file name stem, or None if it is.

    Ids become file names under ``streetview/images/``; a separator or ``..`` would let a
    crafted CSV write or read outside the city directory.
    """
    if not image_id:
        return "empty image_id"
    if "/" in image_id or "\\" in image_id or ".." in image_id:
        return f"image_id {image_id!r} contains a path separator or '..'"
    if not _SAFE_ID.match(image_id):
        return f"image_id {image_id!r} has characters other than letters, digits, '_', '-', '.'"
    return None


def capture_codes(meta: pd.DataFrame) -> np.ndarray:
    """Each photo's capture (``sequence_id``) as codes 0..n-1 in order of first appearance.

    A photo without a ``sequence_id`` (no column, or an empty cell) is a capture of its own. The
    ``sequence`` split deals captures whole, and intervals resample them, since photos of one
    capture share a camera, light and streets and are not independent.
    """
    if "sequence_id" not in meta.columns:
        return np.arange(len(meta))
    ids = meta["sequence_id"].astype("string")
    missing = ids.isna() | (ids.str.strip() == "")
    keys = ids.where(~missing, "\0photo:" + meta["image_id"].astype("string"))
    codes, _ = pd.factorize(keys)
    return codes


@dataclass(frozen=True)
class CityDir:
    """Paths of one city directory, and readers that validate what they read."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def satellite_dir(self) -> Path:
        return self.root / "satellite"

    @property
    def images_dir(self) -> Path:
        return self.root / "streetview" / "images"

    @property
    def metadata_csv(self) -> Path:
        return self.root / "streetview" / "metadata.csv"

    @property
    def split_csv(self) -> Path:
        return self.root / "split.csv"

    @property
    def split_areas(self) -> Path:
        return self.root / "split_areas.geojson"

    @property
    def pyramid_path(self) -> Path:
        return self.root / "pyramid.h5"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def tiles_dir(self) -> Path:
        return self.root / "tiles"

    def sharing(self, root: str | Path, split: bool = False) -> CityDir:
        """A city folder at ``root`` that shares this one's imagery, photos, region, pyramid and caches
        (relative links) and holds a split of its own: one city under several split protocols, each an
        ordinary city folder for every command, with the caches computed once for all. With ``split``
        it shares this one's split too (a dataset's given split).
        """
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.embeddings_dir.mkdir(exist_ok=True)
        shared = [self.satellite_dir, self.metadata_csv.parent, self.pyramid_path, self.embeddings_dir]
        shared += [p for p in (self.region_path, self.tiles_dir) if p.exists()]
        shared += [self.split_csv, self.split_areas] if split else []
        for own in shared:
            link = root / own.name
            if not (link.is_symlink() or link.exists()):
                link.symlink_to(os.path.relpath(own, root))
        return CityDir(root)

    @property
    def region_path(self) -> Path:
        return self.root / "region.json"

    def read_region(self) -> ZoomGrid | None:
        """The zoom grid a dataset fixes for this city (``region.json``: :meth:`ZoomGrid.to_attrs` as JSON), or None.

        A dataset whose photos come with zoom paths (``zoomloc import-jzi``) names cells of one
        grid; the pyramid must cut exactly those cells, whatever the imagery covers.
        """
        if not self.region_path.is_file():
            return None
        try:
            return ZoomGrid.from_attrs(json.loads(self.region_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"is not a zoom grid ({type(exc).__name__}: {exc})", self.region_path) from None

    def write_region(self, grid: ZoomGrid) -> None:
        write_text(self.region_path, json.dumps(grid.to_attrs(), indent=2) + "\n")

    def image_path(self, image_id: str) -> Path:
        return self.images_dir / f"{image_id}.jpg"

    def satellite_files(self, required: bool = True) -> list[Path]:
        """The GeoTIFFs of ``satellite/``, sorted; an error if there are none and they are ``required``."""
        if not self.root.is_dir():
            raise InputError("not a city directory (no such folder)", self.root)
        if not self.satellite_dir.is_dir():
            raise InputError("no satellite/ folder with GeoTIFFs", self.root)
        files = sorted(p for p in self.satellite_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith("."))
        if not files and required:
            raise InputError("holds no GeoTIFF (*.tif, *.tiff) nor tile folder (layout.yaml, xyz/)", self.satellite_dir)
        return files

    def read_metadata(self) -> pd.DataFrame:
        """metadata.csv as a DataFrame, validated: ids safe and unique, lon/lat finite and in range."""
        return read_metadata_csv(self.metadata_csv)

    def read_split(self) -> pd.DataFrame:
        """split.csv as a DataFrame (image_id, split), validated against ``SPLITS``."""
        path = self.split_csv
        df = read_table(path, ("image_id", "split"))
        bad = ~df["split"].isin(SPLITS)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"line {i + 2}: split {df['split'].iloc[i]!r} is not one of {', '.join(SPLITS)}", path)
        return df

    def provenance(self) -> dict[str, str]:
        """Digests of the photo list and of the split, which a trained model records.

        They tell a run trained on other photos, or before the city was split anew, from one of
        this split: its training photos may be this split's test photos.
        """
        return {"photos": self.photos_digest(), "split": _digest(self.split_csv, "the split", "run 'zoomloc split' first")}

    def photos_digest(self) -> str:
        """Digest of metadata.csv: what was computed from the photo list (a model, the street cache) is of this list."""
        return _digest(self.metadata_csv, "the photo list", "import or generate the photos first")

    def changed_since(self, recorded: Mapping[str, Any]) -> tuple[str, ...]:
        """Which of the :meth:`provenance` digests (``photos``, ``split``) differ from ``recorded``
        (a model's); one it did not record (an older model) cannot be checked and counts as the same."""
        current = self.provenance()
        return tuple(k for k in current if recorded.get(k, current[k]) != current[k])

    def trained_elsewhere(self, recorded: Mapping[str, Any]) -> str | None:
        """Why a model that recorded ``recorded`` may have trained on this city's test photos, or None."""
        changed = self.changed_since(recorded)
        if not changed:
            return None
        what, file = ("other photos than", self.metadata_csv) if "photos" in changed else ("another split of", self.split_csv)
        return f"was trained on {what} {self.root} ({file.name} changed since)"


def _digest(path: Path, what: str, remedy: str) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror}); {remedy}", path) from None


def read_metadata_csv(path: Path) -> pd.DataFrame:
    """Read and validate a metadata.csv (see :class:`CityDir`)."""
    df = read_table(path, METADATA_COLUMNS)
    check_image_ids(df["image_id"], path)
    dup = df["image_id"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputError(f"line {i + 2}: duplicate image_id {df['image_id'].iloc[i]!r}", path)
    check_coordinates(df, {"lon": 180.0, "lat": 90.0}, path)
    return df


def read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A CSV of photos (an ``image_id`` column among the ``required`` ones), or one line saying why not."""
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        df = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable CSV ({str(exc).splitlines()[0]})", path) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"missing required column(s) {', '.join(missing)}", path)
    df["image_id"] = df["image_id"].fillna("").astype(str)
    return df


def check_image_ids(ids: pd.Series, path: Path) -> None:
    """An error naming the first id of a CSV (line by line) that is no safe file name stem (:func:`check_image_id`)."""
    for i, image_id in enumerate(ids):
        problem = check_image_id(image_id)
        if problem:
            raise InputError(f"line {i + 2}: {problem}", path)


def check_coordinates(df: pd.DataFrame, limits: Mapping[str, float], path: Path) -> None:
    """Make each column of ``limits`` (lon, lat by whatever names a CSV gives them) floats, in place; an
    error naming the first value that is no number within ±its limit."""
    for col, limit in limits.items():
        values = pd.to_numeric(df[col], errors="coerce")
        bad = ~(np.isfinite(values) & (values.abs() <= limit))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"line {i + 2}: {col} {str(df[col].iloc[i])!r} is not a number within ±{limit:g}", path)
        df[col] = values.astype(float)
