"""Import the Just Zoom In dataset (Washington DC) as a city folder (``zoomloc import-jzi``).

The dataset, as its official code reads it::

    JZI_ROOT/
      satellite/          a tiledwebmaps folder: layout.yaml, tiles {zoom}/{x}/{y}.jpg
      streetview/images/  <image_id>_undistorted.jpg
      metadata/           large_area_train_map.csv, large_area_val_map.csv
                          (image_id, latitude, longitude, sequence[, sequence_id])

``sequence`` is each photo's zoom path over a 10 km square: the official code places it 2 km
east of ``(38.8936, -77.0116)`` (east offsets -3000..7000 m, north offsets -5000..5000 m), splits
each square 4×4 over 4 levels and numbers a child ``row * 4 + col``, row 0 north, col 0 west, which
is zoomloc's own path convention. It finds a child's centre by moving from its parent's centre
east, then north, along great circles of a sphere of radius 6 378 137 m (``tiledwebmaps.geo``).
The code that computed ``sequence`` from latitude and longitude is not published; the local frame
those moves imply is an equirectangular one on that sphere, centred on the paper's centre, which
:func:`paper_grid` uses: it agrees with the official cell centres to 1.2 m at most over the
whole square (``tests/test_jzi.py`` checks the paths). Photos closer than that to a cell edge may
therefore carry the neighbouring cell in ``sequence``; the import counts them and accepts any
sequence whose cell lies within :data:`TOLERANCE_M` of the photo, and refuses the rest.

The city folder gets: the photos (hard-linked where possible, copied otherwise), metadata.csv
(``sequence_id`` when the CSVs have the Mapillary sequence), ``satellite/jzi`` (a link to the
dataset's tile folder, read by ``build-pyramid`` through :mod:`zoomloc.geo.tiles`), ``region.json``
(:func:`paper_grid`: ``build-pyramid`` then cuts exactly the dataset's cells) and the split the
dataset gives (``by: given``): the train CSV trains (less a seeded share kept for validation, on
which training selects its checkpoint), the val CSV is the test split, as the paper reports on it.
"""

from __future__ import annotations

import ast
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyproj import CRS

from data_prep.split import SplitSummary, write_given_split
from zoomloc.core.atomic import atomic_path
from zoomloc.core.errors import InputError, OutsideRegionError
from zoomloc.geo.citydir import SPLITS, CityDir, check_coordinates, check_image_ids, read_table
from zoomloc.geo.grid import ZoomGrid

CENTRE_LATLON = (38.8936, -77.0116)  # the official code's geographic_center_latlon
REGION_BOUNDS_M = (-3000.0, 7000.0, -5000.0, 5000.0)  # its region_bounds_meters: min/max east, min/max north
K, LEVELS = 4, 4  # its grid_size and sequence_length
SPHERE_RADIUS_M = 6_378_137.0  # tiledwebmaps.geo.EARTH_RADIUS_METERS
TOLERANCE_M = 2.0
"""How far a photo may lie outside the cell its ``sequence`` names (the frames' 1.2 m, with margin)."""

CSVS = {"train": "large_area_train_map.csv", "val": "large_area_val_map.csv"}
COLUMNS = ("image_id", "latitude", "longitude", "sequence")
SEQUENCE_ID_COLUMNS = ("sequence_id", "sequence_key")  # the Mapillary sequence, where the CSVs have it
IMAGE_SUFFIX = "_undistorted.jpg"
PAPER_BATCH, PAPER_EPOCHS = 64, 30


def paper_grid(
    centre_latlon: tuple[float, float] = CENTRE_LATLON, bounds_m: tuple[float, float, float, float] = REGION_BOUNDS_M
) -> ZoomGrid:
    """The dataset's zoom grid: the square ``bounds_m`` (east and north offsets from ``centre_latlon``)
    in an equirectangular frame on the official code's sphere, true to scale at the centre."""
    lat, lon = centre_latlon
    west, east, south, north = bounds_m
    if not np.isclose(east - west, north - south):
        raise InputError(f"the region must be a square, not {east - west:g} × {north - south:g} m")
    crs = CRS.from_proj4(f"+proj=eqc +lat_ts={lat} +lat_0={lat} +lon_0={lon} +R={SPHERE_RADIUS_M} +units=m +no_defs +type=crs")
    return ZoomGrid(crs.to_wkt(), west, north, east - west, K, LEVELS)


@dataclass(frozen=True)
class JziSummary:
    """What the import wrote, for the CLI to print."""

    city: Path
    photos: dict[str, int]  # per split
    linked: int  # photos hard-linked (the others were copied)
    near_edge: int  # photos whose sequence names the neighbour of the grid's cell, within TOLERANCE_M
    split: SplitSummary

    def describe(self) -> str:
        total = sum(self.photos.values())
        steps = PAPER_EPOCHS * self.photos["train"] // PAPER_BATCH
        return "\n".join(
            [
                f"imported {total} photos into {self.city} ({self.linked} hard-linked, {total - self.linked} copied)",
                f"region: the dataset's 10 km square, {K}x{K} over {LEVELS} levels (region.json); "
                f"{total - self.near_edge} sequences equal the grid's paths, {self.near_edge} name a neighbour "
                f"within {TOLERANCE_M:g} m of a cell edge",
                self.split.describe(),
                f"the paper's {PAPER_EPOCHS} epochs at batch {PAPER_BATCH} are {steps} steps (train.steps)",
                f"next: zoomloc benchmark --config configs/jzi_dc.yaml --city {self.city} --out runs/jzi_dc",
            ]
        )


def import_jzi(root: str | os.PathLike, city_dir: str | os.PathLike, *, val_fraction: float = 0.05, seed: int = 0) -> JziSummary:
    """Import the dataset at ``root`` into ``city_dir`` (see the module doc).

    Everything is checked before anything is written: the tile layout, both CSVs (columns, ids,
    coordinates, each sequence against its photo's position) and every photo file.
    """
    root, city = Path(root), CityDir(city_dir)
    if not 0 <= val_fraction < 1:
        raise InputError(f"the validation share must lie in [0, 1), not {val_fraction:g}")
    tiles = root / "satellite"
    if not (tiles / "layout.yaml").is_file():
        raise InputError("no satellite/layout.yaml: not a Just Zoom In dataset folder (its tiles are a tiledwebmaps folder)", root)
    grid = paper_grid()
    table = pd.concat([_read_csv(root / "metadata" / name, grid).assign(part=part) for part, name in CSVS.items()], ignore_index=True)
    dup = table["image_id"].duplicated()
    if dup.any():
        raise InputError(f"photo {table['image_id'][dup].iloc[0]!r} is in both CSVs", root / "metadata")
    sources = root / "streetview" / "images"
    table["source"] = [sources / f"{image_id}{IMAGE_SUFFIX}" for image_id in table["image_id"]]
    absent = ~table["source"].map(Path.is_file)
    if absent.any():
        raise InputError(f"{int(absent.sum())} photo(s) of the CSVs are missing, first {table['source'][absent].iloc[0].name}", sources)

    city.images_dir.mkdir(parents=True, exist_ok=True)
    city.satellite_dir.mkdir(parents=True, exist_ok=True)
    _link_folder(city.satellite_dir / "jzi", tiles)
    linked = sum(_place(src, city.image_path(image_id)) for src, image_id in zip(table["source"], table["image_id"]))
    meta = pd.DataFrame({"image_id": table["image_id"], "lon": table["longitude"], "lat": table["latitude"]})
    if "sequence_id" in table.columns:
        meta["sequence_id"] = table["sequence_id"]
    with atomic_path(city.metadata_csv) as tmp:
        meta.to_csv(tmp, index=False)
    city.write_region(grid)
    split = _given_split(table, val_fraction, seed)
    summary = write_given_split(city.root, pd.Series(split, index=table["image_id"].to_numpy()))
    return JziSummary(
        city=city.root,
        photos={s: int((split == s).sum()) for s in SPLITS},
        linked=linked,
        near_edge=int(table["near_edge"].sum()),
        split=summary,
    )


def _read_csv(path: Path, grid: ZoomGrid) -> pd.DataFrame:
    """One metadata CSV, validated: columns, ids, coordinates, and each sequence against its photo."""
    df = read_table(path, COLUMNS)
    check_image_ids(df["image_id"], path)
    check_coordinates(df, {"latitude": 90.0, "longitude": 180.0}, path)
    out = df[["image_id", "latitude", "longitude"]].copy()
    sequence_id = next((c for c in SEQUENCE_ID_COLUMNS if c in df.columns), None)
    if sequence_id is not None:
        out["sequence_id"] = df[sequence_id].fillna("").astype(str)  # empty: a photo without its capture
    sequences = df["sequence"].fillna("")
    paths = np.array([_parse_sequence(value, i, path) for i, value in enumerate(sequences)], dtype=np.int64).reshape(-1, LEVELS)
    out["near_edge"] = _check_sequences(grid, out["longitude"].to_numpy(), out["latitude"].to_numpy(), paths, path)
    return out


def _parse_sequence(value: object, i: int, path: Path) -> list[int]:
    """A ``sequence`` cell: a list of LEVELS actions in 0..K*K-1, written ``[a, b, c, d]`` as in the dataset."""
    try:
        actions = list(ast.literal_eval(str(value)))
    except (ValueError, SyntaxError, TypeError):
        raise InputError(f"line {i + 2}: sequence {value!r} is not a list of {LEVELS} numbers", path) from None
    if len(actions) != LEVELS or not all(isinstance(a, int) and 0 <= a < K * K for a in actions):
        raise InputError(f"line {i + 2}: sequence {value!r} is not {LEVELS} actions in 0..{K * K - 1}", path)
    return actions


def _check_sequences(grid: ZoomGrid, lon: np.ndarray, lat: np.ndarray, paths: np.ndarray, path: Path) -> np.ndarray:
    """Which photos' sequences name a neighbour of the grid's cell (near an edge); an error if one names a farther cell."""
    x, y = grid.to_xy(lon, lat)
    outside = ~grid.contains_xy(x, y)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise OutsideRegionError(f"line {i + 2}: lat {lat[i]:.6f}, lon {lon[i]:.6f} lies outside the dataset's 10 km square", path)
    minx, miny, maxx, maxy = np.moveaxis(grid.bounds_of_path(paths), -1, 0)
    off = np.hypot(np.maximum.reduce([minx - x, x - maxx, np.zeros_like(x)]), np.maximum.reduce([miny - y, y - maxy, np.zeros_like(y)]))
    far = off > TOLERANCE_M
    if far.any():
        i = int(np.flatnonzero(far)[0])
        own = grid.path_of_xy(x[i], y[i]).tolist()
        raise InputError(
            f"line {i + 2}: sequence {paths[i].tolist()} names a cell {off[i]:.0f} m from the photo's lat/lon, whose path is {own}", path
        )
    return (grid.path_of_xy(x, y) != paths).any(axis=-1)


def _given_split(table: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """train / val / test per photo: the val CSV tests; a seeded ``val_fraction`` of the train CSV validates."""
    split = np.where(table["part"] == "train", "train", "test").astype(object)
    train = np.flatnonzero(split == "train")
    held = np.random.default_rng(seed).choice(train, size=round(val_fraction * len(train)), replace=False)
    split[held] = "val"
    return split


def _link_folder(link: Path, target: Path) -> None:
    """``link`` → ``target`` (absolute): the tiles stay where the dataset keeps them."""
    if link.is_symlink() and link.resolve() == target.resolve():
        return
    if link.is_symlink() or link.exists():
        raise InputError(f"already exists and is not a link to {target}", link)
    link.symlink_to(target.resolve(), target_is_directory=True)


def _place(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst`` (atomically), or copy it where links cannot be made; True if linked."""
    with atomic_path(dst) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
            return True
        except OSError:
            shutil.copyfile(src, tmp)
            return False
