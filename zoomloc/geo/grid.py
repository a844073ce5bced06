"""The zoom grid: a square region of the Earth split recursively into k×k cells.

A :class:`ZoomGrid` is a value (immutable, no I/O), like a tile matrix set: every
localization, pyramid and split agrees on cells because they all share one. The region is a
square of side ``side_m`` metres in a projected metric CRS (by default the UTM zone of its
centre), anchored at its north-west corner ``(origin_x, origin_y)``. Level 0 is the whole
region; each cell of level ``l`` has ``k*k`` children at level ``l+1``; the terminal level is
``levels`` and its cells have side ``side_m / k**levels`` (the paper: k=4, levels=4,
10 km → 39.06 m).

Two ways to name a cell, both used throughout zoomloc:

* a **path**: the actions taken from the root, ``a = row*k + col`` of the chosen child in its
  parent's k×k grid (row 0 north, col 0 west). A path of length ``l`` names a cell of level ``l``.
* a **cell index** at a level: row-major over that level's ``k**l × k**l`` grid
  (``index = row * k**l + col``, row 0 north), the order of the pyramid's arrays.

All methods are vectorized: they take arrays of points or paths and return arrays.
The region is half-open: west and north edges belong to it, east and south edges do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import shapely
import shapely.ops
from pyproj import CRS, Geod, Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info

from zoomloc.core.errors import InputError, OutsideRegionError

WGS84 = CRS.from_epsg(4326)
_GEOD = Geod(ellps="WGS84")


def geodesic_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle (ellipsoidal, WGS84) distance in metres between lon/lat points.

    All metrics in zoomloc use this, never a flat-Earth formula: grid CRS distances are
    distorted by the projection's scale factor (up to 0.1 % in UTM, far more elsewhere).
    """
    lon1, lat1, lon2, lat2 = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (lon1, lat1, lon2, lat2)))
    _, _, dist = _GEOD.inv(lon1, lat1, lon2, lat2)
    return np.asarray(dist, dtype=float)


def utm_crs_for(lon: float, lat: float) -> CRS:
    """The UTM CRS (WGS84 datum) of the zone containing ``(lon, lat)``."""
    if not (-180 <= lon <= 180 and -80 <= lat <= 84):
        raise InputError(f"no UTM zone covers lon={lon:.6f}, lat={lat:.6f}")
    infos = query_utm_crs_info(
        datum_name="WGS 84",
        area_of_interest=AreaOfInterest(lon, lat, lon, lat),
    )
    # Prefer the plain "WGS 84 / UTM zone NNx" entries (EPSG 326xx/327xx).
    infos = sorted(infos, key=lambda i: (not i.code.startswith(("326", "327")), i.code))
    return CRS.from_epsg(int(infos[0].code))


@dataclass(frozen=True)
class ZoomGrid:
    """A square region split recursively into ``k×k`` cells over ``levels`` levels."""

    crs_wkt: str
    origin_x: float  # west edge, grid CRS metres
    origin_y: float  # north edge, grid CRS metres
    side_m: float
    k: int = 4
    levels: int = 4

    def __post_init__(self) -> None:
        if self.k < 2 or self.levels < 1:
            raise InputError(f"a zoom grid needs k >= 2 and levels >= 1 (got k={self.k}, levels={self.levels})")
        if not self.side_m > 0:
            raise InputError(f"a zoom grid needs a positive side (got {self.side_m} m)")
        crs = CRS.from_user_input(self.crs_wkt)
        if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
            raise InputError(f"the grid CRS must be projected in metres, not {crs.name}")
        object.__setattr__(self, "crs_wkt", crs.to_wkt())

    # ----------------------------------------------------------------- construction
    @classmethod
    def covering(
        cls,
        bounds: tuple[float, float, float, float],
        bounds_crs: Any = WGS84,
        *,
        k: int = 4,
        levels: int = 4,
        terminal_m: float | None = None,
        side_m: float | None = None,
        grid_crs: Any = None,
    ) -> ZoomGrid:
        """The grid centred on ``bounds`` (minx, miny, maxx, maxy in ``bounds_crs``).

        The side is ``side_m`` if given, else ``terminal_m * k**levels``, else the smallest
        square covering the bounds. The CRS is ``grid_crs`` if given, else the UTM zone of the
        bounds' centre.
        """
        bounds_crs = CRS.from_user_input(bounds_crs)
        minx, miny, maxx, maxy = bounds
        if not (minx < maxx and miny < maxy):
            raise InputError(f"empty or inverted bounds {bounds}")
        if grid_crs is None:
            lon0, lat0 = Transformer.from_crs(bounds_crs, WGS84, always_xy=True).transform((minx + maxx) / 2, (miny + maxy) / 2)
            grid_crs = utm_crs_for(lon0, lat0)
        grid_crs = CRS.from_user_input(grid_crs)
        gx0, gy0, gx1, gy1 = Transformer.from_crs(bounds_crs, grid_crs, always_xy=True).transform_bounds(
            minx, miny, maxx, maxy, densify_pts=21
        )
        if side_m is None:
            side_m = terminal_m * k**levels if terminal_m is not None else max(gx1 - gx0, gy1 - gy0)
        cx, cy = (gx0 + gx1) / 2, (gy0 + gy1) / 2
        return cls(grid_crs.to_wkt(), cx - side_m / 2, cy + side_m / 2, float(side_m), k, levels)

    def to_attrs(self) -> dict[str, Any]:
        """The grid as flat attributes (the pyramid's HDF5 root attributes)."""
        return {
            "crs_wkt": self.crs_wkt,
            "origin_x": self.origin_x,
            "origin_y": self.origin_y,
            "side_m": self.side_m,
            "k": self.k,
            "levels": self.levels,
        }

    @classmethod
    def from_attrs(cls, attrs: Any) -> ZoomGrid:
        """Inverse of :meth:`to_attrs` (accepts an h5py ``attrs`` mapping)."""
        return cls(
            str(attrs["crs_wkt"]),
            float(attrs["origin_x"]),
            float(attrs["origin_y"]),
            float(attrs["side_m"]),
            int(attrs["k"]),
            int(attrs["levels"]),
        )

    def same_region(self, other: ZoomGrid, tol_m: float = 1e-3) -> bool:
        """True if both grids cut the same cells (same CRS, origin, side, k, levels)."""
        return (
            self.k == other.k
            and self.levels == other.levels
            and self.crs == other.crs
            and abs(self.origin_x - other.origin_x) <= tol_m
            and abs(self.origin_y - other.origin_y) <= tol_m
            and abs(self.side_m - other.side_m) <= tol_m
        )

    # ----------------------------------------------------------------- sizes
    @cached_property
    def crs(self) -> CRS:
        return CRS.from_wkt(self.crs_wkt)

    @property
    def terminal_m(self) -> float:
        """Side of a terminal cell in metres."""
        return self.side_m / self.k**self.levels

    def cell_size(self, level: int) -> float:
        """Side of a cell of ``level`` in metres."""
        return self.side_m / self.k**level

    def cells_per_side(self, level: int) -> int:
        return self.k**level

    def n_cells(self, level: int) -> int:
        return self.k ** (2 * level)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The region as (minx, miny, maxx, maxy) in the grid CRS."""
        return (self.origin_x, self.origin_y - self.side_m, self.origin_x + self.side_m, self.origin_y)

    # ----------------------------------------------------------------- coordinates
    @cached_property
    def _to_grid(self) -> Transformer:
        return Transformer.from_crs(WGS84, self.crs, always_xy=True)

    @cached_property
    def _to_wgs84(self) -> Transformer:
        return Transformer.from_crs(self.crs, WGS84, always_xy=True)

    def to_xy(self, lon, lat) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 lon/lat → grid CRS x/y (metres)."""
        lon, lat = _as_float(lon), _as_float(lat)
        bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"invalid lon/lat ({lon.flat[i]}, {lat.flat[i]}) at position {i}")
        x, y = self._to_grid.transform(lon, lat)
        return np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    def to_lonlat(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Grid CRS x/y (metres) → WGS84 lon/lat."""
        lon, lat = self._to_wgs84.transform(_as_float(x), _as_float(y))
        return np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)

    def contains_xy(self, x, y) -> np.ndarray:
        """Boolean mask of the grid CRS points inside the (half-open) region."""
        x, y = _as_float(x), _as_float(y)
        return (x >= self.origin_x) & (x < self.origin_x + self.side_m) & (y <= self.origin_y) & (y > self.origin_y - self.side_m)

    def contains_lonlat(self, lon, lat) -> np.ndarray:
        return self.contains_xy(*self.to_xy(lon, lat))

    # ----------------------------------------------------------------- points → cells
    def rowcol_of_xy(self, x, y, level: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of the cell of ``level`` (default: terminal) holding each point.

        Raises :class:`OutsideRegionError` if any point lies outside the region.
        """
        level = self.levels if level is None else level
        x, y = _as_float(x), _as_float(y)
        inside = self.contains_xy(x, y)
        if not inside.all():
            i = int(np.flatnonzero(~inside)[0])
            lon, lat = self.to_lonlat(x.flat[i], y.flat[i])
            raise OutsideRegionError(
                f"{int((~inside).sum())} point(s) lie outside the {self.side_m:.0f} m region, "
                f"first at lon={float(lon):.6f}, lat={float(lat):.6f}"
            )
        size = self.cell_size(level)
        n = self.cells_per_side(level)
        cols = np.clip(np.floor((x - self.origin_x) / size).astype(np.int64), 0, n - 1)
        rows = np.clip(np.floor((self.origin_y - y) / size).astype(np.int64), 0, n - 1)
        return rows, cols

    def path_of_xy(self, x, y, level: int | None = None) -> np.ndarray:
        """Action path (shape ``[..., level]``, default all levels) of the cell holding each point."""
        level = self.levels if level is None else level
        rows, cols = self.rowcol_of_xy(x, y, level)
        return self.path_of_rowcol(rows, cols, level)

    def path_of_lonlat(self, lon, lat, level: int | None = None) -> np.ndarray:
        """Action path of the cell holding each WGS84 point."""
        return self.path_of_xy(*self.to_xy(lon, lat), level=level)

    def cell_of_lonlat(self, lon, lat, level: int | None = None) -> np.ndarray:
        """Cell index at ``level`` (default: terminal) of the cell holding each WGS84 point."""
        level = self.levels if level is None else level
        rows, cols = self.rowcol_of_xy(*self.to_xy(lon, lat), level=level)
        return rows * self.cells_per_side(level) + cols

    # ----------------------------------------------------------------- paths ↔ cells
    def path_of_rowcol(self, rows, cols, level: int) -> np.ndarray:
        """Action paths (``[..., level]``) of the cells at (rows, cols) of ``level``."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        shifts = self.k ** np.arange(level - 1, -1, -1, dtype=np.int64)  # k^(level-1) … k^0
        r = (rows[..., None] // shifts) % self.k
        c = (cols[..., None] // shifts) % self.k
        return r * self.k + c

    def path_of_cell(self, level: int, cells) -> np.ndarray:
        """Action paths of cell indices at ``level``."""
        cells = np.asarray(cells, dtype=np.int64)
        n = self.cells_per_side(level)
        return self.path_of_rowcol(cells // n, cells % n, level)

    def rowcol_of_path(self, paths) -> tuple[np.ndarray, np.ndarray, int]:
        """Rows, columns and level of the cells named by ``paths`` (``[..., l]``, l may be 0)."""
        paths = np.asarray(paths, dtype=np.int64)
        level = paths.shape[-1]
        if level > self.levels:
            raise InputError(f"a path of length {level} is deeper than the grid's {self.levels} levels")
        if paths.size and (paths.min() < 0 or paths.max() >= self.k * self.k):
            raise InputError(f"actions must lie in 0..{self.k * self.k - 1}")
        weights = self.k ** np.arange(level - 1, -1, -1, dtype=np.int64)
        rows = ((paths // self.k) * weights).sum(axis=-1)
        cols = ((paths % self.k) * weights).sum(axis=-1)
        return rows, cols, level

    def cell_of_path(self, paths) -> np.ndarray:
        """Cell index at level ``len(path)`` of each path."""
        rows, cols, level = self.rowcol_of_path(paths)
        return rows * self.cells_per_side(level) + cols

    def children(self, path) -> np.ndarray:
        """The ``k*k`` child paths of one path, in action order."""
        path = np.asarray(path, dtype=np.int64)
        actions = np.arange(self.k * self.k, dtype=np.int64)[:, None]
        return np.concatenate([np.broadcast_to(path, (len(actions), path.shape[-1])), actions], axis=1)

    def nearest_child(self, parents, rows, cols) -> np.ndarray:
        """The action from each parent path (``[..., l]``, l < levels) into its child nearest the
        terminal cell (``rows``, ``cols``): that cell's own ancestor when the parent holds it, else
        the child on the parent's edge closest to it (the cell index clamped into the parent's
        children, per axis).

        The target of a zoom step taken from a wrong parent: the best a policy can still do there.
        """
        prow, pcol, level = self.rowcol_of_path(parents)
        if level >= self.levels:
            raise InputError(f"a path of length {level} has no children in a grid of {self.levels} levels")
        scale = self.k ** (self.levels - level - 1)
        r = np.clip(np.asarray(rows) // scale - prow * self.k, 0, self.k - 1)
        c = np.clip(np.asarray(cols) // scale - pcol * self.k, 0, self.k - 1)
        return r * self.k + c

    # ----------------------------------------------------------------- cells → geometry
    def bounds_of_path(self, paths) -> np.ndarray:
        """``[..., 4]`` (minx, miny, maxx, maxy) in the grid CRS of the cells named by ``paths``."""
        rows, cols, level = self.rowcol_of_path(paths)
        return self.bounds_of_rowcol(rows, cols, level)

    def bounds_of_rowcol(self, rows, cols, level: int) -> np.ndarray:
        size = self.cell_size(level)
        minx = self.origin_x + np.asarray(cols) * size
        maxy = self.origin_y - np.asarray(rows) * size
        return np.stack([minx, maxy - size, minx + size, maxy], axis=-1).astype(float)

    def centre_xy_of_path(self, paths) -> tuple[np.ndarray, np.ndarray]:
        b = self.bounds_of_path(paths)
        return (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2

    def centre_lonlat_of_path(self, paths) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 lon/lat of the centres of the cells named by ``paths``."""
        return self.to_lonlat(*self.centre_xy_of_path(paths))

    def polygons_lonlat(self, paths, edge_points: int = 8) -> np.ndarray:
        """Shapely polygons in WGS84 of the cells named by ``paths`` (array of geometries).

        Edges are densified to ``edge_points`` segments first: a cell's straight edges in the
        grid CRS are curves in lon/lat, which matters for big (low-level) cells.
        """
        b = self.bounds_of_path(paths).reshape(-1, 4)
        boxes = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
        seg = (b[:, 2] - b[:, 0]) / max(edge_points, 1)
        boxes = shapely.segmentize(boxes, seg)
        return shapely.transform(boxes, lambda xy: np.column_stack(self.to_lonlat(xy[:, 0], xy[:, 1])))

    def region_polygon_lonlat(self):
        """The whole region as a WGS84 shapely polygon."""
        return self.polygons_lonlat(np.zeros((1, 0), dtype=np.int64))[0]

    def outside_m(self, lon: float, lat: float) -> float:
        """How far (geodesic metres) a point lies outside the region; 0 inside. Measured to the region's
        nearest edge point in lon/lat, which is close enough to tell a neighbour from another country."""
        if self.contains_lonlat(lon, lat):
            return 0.0
        edge, _ = shapely.ops.nearest_points(self.region_polygon_lonlat().exterior, shapely.Point(lon, lat))
        return float(geodesic_m(edge.x, edge.y, lon, lat))


def _as_float(v) -> np.ndarray:
    return np.asarray(v, dtype=float)
