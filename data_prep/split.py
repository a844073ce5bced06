"""Split a city's photos into train/val/test (``zoomloc split --by photo|sequence|area``).

Three protocols, from the easiest to the strictest:

- ``photo``: photos drawn at random, the paper's protocol (its official code validates on a
  random 10 % of the city's photos over the same region): a new photo of a city the model has
  learned, often with a neighbour of the same capture among the training photos;
- ``sequence``: whole captures (``sequence_id`` in metadata.csv; a photo without one is its own
  sequence) go to one split, so test photos show streets the model has seen, from other
  captures — another camera, light and weather. The user's case: a city's crowd-sourced photos
  train the model, new captures of it are localized;
- ``area`` (below): test photos in places no training photo comes near; the generalization track;
- ``given``: the split a dataset comes with (``zoomloc import-jzi``, :func:`write_given_split`); it is
  recorded like the others, so that pipelines accept it, but never drawn here.

For ``photo`` and ``sequence`` the units (photos, sequences) are dealt like the area protocol's
blocks, towards the requested image fractions, with no buffer.

A random split of photos leaks: neighbouring photos of one street see the same façades, so a
model scores well on test photos by remembering their train neighbours. Here the ground is
cut into square blocks of ``block_m`` (in the UTM zone of the photos' centre), whole blocks
are dealt to the splits with a seeded shuffle, and every photo within ``buffer_m`` of a block
of another split is dropped. A kept photo is therefore at least ``buffer_m`` (geodesic) from
every block, hence every photo, of another split, and the areas in split_areas.geojson never
hold photos of another split.

Blocks are dealt so that the fractions of *kept images* come close to the requested ones:
shuffled blocks go to test, then to val, while each block brings that split's image count
closer to its target; the rest is train. The buffer drop takes relatively more from the small,
scattered val and test areas (a lone 200 m test block keeps only its inner 100 m square with a
50 m buffer), so the deal is repeated a few times with targets raised by each split's measured
loss, keeping the round whose final shares are closest to the request. The shuffle itself is
drawn once, so the result depends only on the seed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Proj

from zoomloc.core.atomic import atomic_path, write_text
from zoomloc.core.errors import InputError
from zoomloc.geo.citydir import SPLITS, CityDir, capture_codes
from zoomloc.geo.grid import WGS84, utm_crs_for

FRACTION_TOLERANCE = 1e-6
CONFIG_MEMBER = "split_config"  # the SplitConfig that made split_areas.geojson, recorded in it
DEAL_ROUNDS = 4  # re-deals with loss-corrected targets; the shares settle within two or three


Protocol = Literal["area", "photo", "sequence", "given"]
PROTOCOLS: tuple[Protocol, ...] = ("photo", "sequence", "area", "given")
DRAWN_PROTOCOLS = PROTOCOLS[:3]  # what split_city draws; the given split comes with a dataset
UNITS = {"area": "blocks", "photo": "photos", "sequence": "sequences", "given": "photos"}  # what a protocol deals out


@dataclass(frozen=True)
class SplitConfig:
    """How to split: the protocol, block side and buffer in metres (``area`` only), image fractions
    (train, val, test), seed."""

    block_m: float = 200.0
    buffer_m: float = 50.0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    by: Protocol = "area"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.block_m) and self.block_m > 0):
            raise InputError(f"the block side (--block-m) must be a positive number of metres, not {self.block_m:g}")
        if not (math.isfinite(self.buffer_m) and self.buffer_m >= 0):
            raise InputError(f"the buffer (--buffer-m) must be a non-negative number of metres, not {self.buffer_m:g}")
        given = " ".join(f"{f:g}" for f in self.fractions)
        if len(self.fractions) != len(SPLITS):
            raise InputError(f"--fractions needs 3 numbers (train val test), not {given!r}")
        if not all(math.isfinite(f) and f >= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > FRACTION_TOLERANCE:
            raise InputError(f"--fractions must be 3 non-negative numbers summing to 1, not {given}")
        if self.fraction("train") == 0 or self.fraction("test") == 0:
            raise InputError(f"--fractions must give train and test a share above 0, not {given}")
        if self.by not in PROTOCOLS:
            raise InputError(f"--by must be one of {', '.join(PROTOCOLS)}, not {self.by!r}")

    def fraction(self, split: str) -> float:
        return self.fractions[SPLITS.index(split)]


@dataclass(frozen=True)
class SplitSummary:
    """Photos kept, blocks and photos dropped per split, and the files written."""

    split_csv: Path
    areas_geojson: Path
    block_m: float
    buffer_m: float
    images: dict[str, int]
    blocks: dict[str, int]  # units dealt to each split: blocks, photos or sequences (see ``by``)
    dropped: dict[str, int]
    by: Protocol = "area"

    def describe(self) -> str:
        kept = sum(self.images.values())
        how = {
            "area": f"by {self.block_m:g} m blocks, {self.buffer_m:g} m apart",
            "photo": "by photo, at random (the paper's protocol)",
            "sequence": "by sequence: whole captures to one split",
            "given": "as the dataset gives it",
        }[self.by]
        lines = [f"split {kept + sum(self.dropped.values())} photos {how}:"]
        for name in SPLITS:
            share = self.images[name] / kept if kept else 0.0
            line = f"  {name:<5} {self.images[name]:>7} photos ({share:6.1%})"
            if self.by not in ("photo", "given"):
                line += f" in {self.blocks[name]} {UNITS[self.by]}"
            if self.by == "area":
                line += f", {self.dropped[name]} dropped near another split"
            lines.append(line)
        lines.append(f"wrote {self.split_csv} and {self.areas_geojson}")
        return "\n".join(lines)


def split_city(city_dir: str | os.PathLike, cfg: SplitConfig) -> SplitSummary:
    """Split the photos of ``city_dir`` by area; write split.csv and split_areas.geojson."""
    city = CityDir(city_dir)
    if cfg.by not in DRAWN_PROTOCOLS:
        raise InputError("the given split comes with a dataset (zoomloc import-jzi) and cannot be drawn; choose photo, sequence or area")
    meta = city.read_metadata()
    if meta.empty:
        raise InputError("holds no photo", city.metadata_csv)
    points = _project(meta)
    if cfg.by == "area":
        blocks, points["block"] = _blocks(points, cfg.block_m)
        buffer = cfg.buffer_m * _max_scale_factor(meta, points.crs)
        blocks["split"], near = _deal_and_drop(points, blocks, buffer, cfg)
    else:  # photos or sequences dealt at random, nothing dropped
        codes = _units(meta, cfg.by)
        blocks = pd.DataFrame({"n_images": np.bincount(codes)})
        points["block"] = codes
        order = np.random.default_rng(cfg.seed).permutation(len(blocks))
        blocks["split"] = _deal(blocks["n_images"].to_numpy(), dict(zip(SPLITS, cfg.fractions)), order)
        near = np.zeros(len(points), dtype=bool)
    points["split"] = blocks["split"].to_numpy()[points["block"]]
    kept = points[~near]
    images = {s: int((kept["split"] == s).sum()) for s in SPLITS}
    summary = SplitSummary(
        split_csv=city.split_csv,
        areas_geojson=city.split_areas,
        block_m=cfg.block_m,
        buffer_m=cfg.buffer_m,
        images=images,
        blocks={s: int((blocks["split"] == s).sum()) for s in SPLITS},
        dropped={s: int((points.loc[near, "split"] == s).sum()) for s in SPLITS},
        by=cfg.by,
    )
    _check_every_split_kept(summary, cfg, len(meta), city.metadata_csv)
    _write(city, kept, _areas(blocks, images, cfg.block_m) if cfg.by == "area" else _photo_areas(kept, images), cfg)
    return summary


def write_given_split(city_dir: str | os.PathLike, split: pd.Series) -> SplitSummary:
    """Record the split a dataset comes with: ``split`` maps each image_id of metadata.csv to train, val or test.

    Written as :func:`split_city` writes its own (split.csv, split_areas.geojson with the config
    ``by: given`` and the resulting fractions), so that every command and pipeline reads it alike.
    """
    city = CityDir(city_dir)
    points = _project(city.read_metadata())
    points["split"] = points["image_id"].map(split).to_numpy()
    if points["split"].isna().any():
        missing = points["image_id"][points["split"].isna()].iloc[0]
        raise InputError(f"photo {missing!r} has no split", city.metadata_csv)
    images = {s: int((points["split"] == s).sum()) for s in SPLITS}
    total = sum(images.values())
    cfg = SplitConfig(fractions=tuple(images[s] / total for s in SPLITS), by="given")
    _write(city, points, _photo_areas(points, images), cfg)
    zero = {s: 0 for s in SPLITS}
    return SplitSummary(city.split_csv, city.split_areas, cfg.block_m, cfg.buffer_m, images, zero, zero, by="given")


def _write(city: CityDir, kept: gpd.GeoDataFrame, regions: gpd.GeoDataFrame, cfg: SplitConfig) -> None:
    """split.csv and split_areas.geojson, the latter recording ``cfg`` (see :func:`config_mismatch`)."""
    with atomic_path(city.split_csv) as tmp:
        kept[["image_id", "split"]].to_csv(tmp, index=False)
    areas = json.loads(regions.to_json(drop_id=True))
    areas[CONFIG_MEMBER] = asdict(cfg)  # a GeoJSON foreign member: readers that do not know it skip it
    write_text(city.split_areas, json.dumps(areas))


def config_mismatch(city_dir: str | os.PathLike, cfg: SplitConfig) -> str | None:
    """How the city's existing split differs from what ``cfg`` would make, or None.

    The settings are read back from split_areas.geojson; a split made before they were
    recorded there cannot be checked and is taken as it is.
    """
    path = CityDir(city_dir).split_areas
    try:
        recorded = json.loads(path.read_text()).get(CONFIG_MEMBER)
    except (OSError, ValueError):
        return None
    if recorded is None:
        return None
    if "given" in (recorded.get("by"), cfg.by):  # a dataset's split is whatever it gives; only the protocol can differ
        return None if recorded.get("by") == cfg.by else f"by {recorded.get('by', 'area')} (the config's: {cfg.by})"
    have = SplitConfig(**{"by": "area", **recorded, "fractions": tuple(recorded["fractions"])})
    if have == cfg:
        return None

    def show(value: float | str | tuple[float, ...]) -> str:
        if isinstance(value, str):
            return value
        return " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"

    differing = [f.name for f in fields(SplitConfig) if getattr(have, f.name) != getattr(cfg, f.name)]
    return ", ".join(f"{name} {show(getattr(have, name))} (the config's: {show(getattr(cfg, name))})" for name in differing)


def _units(meta: pd.DataFrame, by: Protocol) -> np.ndarray:
    """Each photo's unit of the ``photo`` or ``sequence`` protocol, as codes 0..n-1 (see :func:`capture_codes`)."""
    return np.arange(len(meta)) if by == "photo" else capture_codes(meta)


def _photo_areas(kept: gpd.GeoDataFrame, images: dict[str, int]) -> gpd.GeoDataFrame:
    """Each split's photos as one multipoint, in WGS84: the photo and sequence protocols have no areas of their own."""
    rows = [(s, shapely.multipoints(kept.geometry[kept["split"] == s].to_numpy())) for s in SPLITS if images[s]]
    areas = gpd.GeoDataFrame({"split": [s for s, _ in rows]}, geometry=[g for _, g in rows], crs=kept.crs)
    areas["images"] = areas["split"].map(images)
    return areas.to_crs(WGS84)


def _project(meta: pd.DataFrame) -> gpd.GeoDataFrame:
    """The photos as points in the UTM zone of their bounding box's centre."""
    lon, lat = meta["lon"].to_numpy(), meta["lat"].to_numpy()
    crs = utm_crs_for((lon.min() + lon.max()) / 2, (lat.min() + lat.max()) / 2)
    points = gpd.GeoDataFrame(meta[["image_id"]], geometry=gpd.points_from_xy(lon, lat), crs=WGS84)
    return points.to_crs(crs)


def _max_scale_factor(meta: pd.DataFrame, crs) -> float:
    """The largest UTM scale factor over the photos (0.9996 on the central meridian, ~1.001 at
    the zone edges): a buffer of ``buffer_m`` times it in projected metres is at least
    ``buffer_m`` on the ellipsoid."""
    factors = Proj(crs).get_factors(meta["lon"].to_numpy(), meta["lat"].to_numpy())
    return float(np.max(factors.meridional_scale))


def _blocks(points: gpd.GeoDataFrame, block_m: float) -> tuple[gpd.GeoDataFrame, np.ndarray]:
    """The non-empty blocks of the grid anchored at the photos' south-west corner, and the
    block of each photo (row-major order, so the same photos always give the same blocks)."""
    x, y = points.geometry.x.to_numpy(), points.geometry.y.to_numpy()
    x0, y0 = x.min(), y.min()
    cols = np.floor((x - x0) / block_m).astype(np.int64)
    rows = np.floor((y - y0) / block_m).astype(np.int64)
    codes, block_of_point, counts = np.unique(rows * (cols.max() + 1) + cols, return_inverse=True, return_counts=True)
    r, c = np.divmod(codes, cols.max() + 1)
    squares = shapely.box(x0 + c * block_m, y0 + r * block_m, x0 + (c + 1) * block_m, y0 + (r + 1) * block_m)
    return gpd.GeoDataFrame({"n_images": counts}, geometry=squares, crs=points.crs), block_of_point


def _deal_and_drop(points: gpd.GeoDataFrame, blocks: gpd.GeoDataFrame, buffer: float, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each block's split and the mask of photos dropped by the buffer, over a few rounds.

    Round after round, each split's target share is divided by the fraction of its photos the
    previous round kept, so that the shares *after* the drop approach ``cfg.fractions``.
    """
    counts = blocks["n_images"].to_numpy()
    order = np.random.default_rng(cfg.seed).permutation(len(blocks))
    wanted = np.array(cfg.fractions)
    targets, best, best_error = wanted, None, np.inf
    for _ in range(DEAL_ROUNDS):
        split = _deal(counts, dict(zip(SPLITS, targets)), order)
        point_split = split[points["block"].to_numpy()]
        near = _near_another_split(points[["geometry"]].assign(split=point_split), blocks[["geometry"]].assign(split=split), buffer)
        assigned = np.array([(point_split == s).sum() for s in SPLITS])
        kept = np.array([((point_split == s) & ~near).sum() for s in SPLITS])
        error = np.abs(kept / max(kept.sum(), 1) - wanted).max()
        if error < best_error:
            best, best_error = (split, near), error
        survival = np.where(kept > 0, kept / np.maximum(assigned, 1), 1.0)
        targets = wanted / survival / (wanted / survival).sum()
    return best


def _deal(counts: np.ndarray, targets: dict[str, float], order: np.ndarray) -> np.ndarray:
    """Each block's split: blocks, taken in ``order``, fill test, then val, towards their
    image targets (fractions of all images); what is left is train.

    A block joins a split if that brings the split's image count closer to its target (the
    first block always joins a split with a positive target).
    """
    split = np.full(len(counts), "train", dtype=object)
    for name in ("test", "val"):
        target, taken = targets[name] * counts.sum(), 0
        for b in order:
            if split[b] != "train" or target == 0:
                continue
            if taken == 0 or abs(taken + counts[b] - target) < abs(taken - target):
                split[b] = name
                taken += counts[b]
    return split


def _near_another_split(points: gpd.GeoDataFrame, blocks: gpd.GeoDataFrame, buffer: float) -> np.ndarray:
    """Mask of the photos within ``buffer`` (projected metres) of a block of another split."""
    pairs = gpd.sjoin(points, blocks, predicate="dwithin", distance=buffer)
    return points.index.isin(pairs.index[pairs["split_left"] != pairs["split_right"]])


def _check_every_split_kept(summary: SplitSummary, cfg: SplitConfig, n_photos: int, metadata_csv: Path) -> None:
    for name in SPLITS:
        if cfg.fraction(name) == 0 or summary.images[name]:
            continue
        if summary.blocks[name] == 0 and cfg.by != "area":
            units = sum(summary.blocks.values())
            raise InputError(
                f"split leaves no {name} images ({units} {UNITS[cfg.by]} for {n_photos} photos): too few to split by {cfg.by}", metadata_csv
            )
        if summary.blocks[name] == 0:
            n_blocks = sum(summary.blocks.values())
            raise InputError(
                f"split leaves no {name} images ({n_blocks} block(s) of {cfg.block_m:g} m for {n_photos} photos); use a smaller --block-m",
                metadata_csv,
            )
        raise InputError(
            f"split leaves no {name} images (all {summary.dropped[name]} of its photos lie within "
            f"{cfg.buffer_m:g} m of another split); use a smaller --buffer-m or a larger --block-m",
            metadata_csv,
        )


def _areas(blocks: gpd.GeoDataFrame, images: dict[str, int], block_m: float) -> gpd.GeoDataFrame:
    """Each split's blocks dissolved into one (multi)polygon, in WGS84, with its image count."""
    areas = blocks[["split", "geometry"]].dissolve(by="split")
    areas = areas.reindex([s for s in SPLITS if s in areas.index]).reset_index()
    areas["images"] = areas["split"].map(images)
    # Densify before reprojecting: a long straight edge in UTM is a curve in lon/lat.
    areas["geometry"] = shapely.segmentize(areas.geometry.values, block_m)
    return areas.to_crs(WGS84)
