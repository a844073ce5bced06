"""The satellite tile pyramid: every cell of the zoom grid rendered once, stored in HDF5.

Training and localization look at the same cells over and over; warping GeoTIFFs each time
would dominate their cost. :func:`build_pyramid` renders every view once from
``CITY_DIR/satellite/*.tif`` (see :mod:`zoomloc.geo.raster`) and :class:`PyramidReader` serves them.

File layout (format version 1), public, readable with plain h5py::

    views/level_{l}    l = 0..L-1   [k^(2l), px, px, 3] uint8, chunks (1, px, px, 3)
                                    the north-up view of each cell of level l, exactly its bounds
    context/terminal                [k^(2L), px, px, 3] uint8, chunks (1, px, px, 3)
                                    each terminal cell with context: a crop of side
                                    context_factor × cell, centred on the cell
    coverage/level_{l}, coverage/terminal
                                    [k^(2l)] float32: fraction of each *cell* (not of its
                                    context crop) that has imagery, 0..1
    root attributes                 format_version (1), crs_wkt, origin_x, origin_y (NW corner,
                                    grid CRS metres), side_m, k, levels (ZoomGrid.to_attrs),
                                    px, context_factor, fill_rgb (colour of areas without
                                    imagery), sources (JSON list: file, size, mtime, crs, ...)

Cell index ``i`` of a level is row-major over its k^l × k^l cells: ``i = row * k**l + col``,
row 0 north, col 0 west; all views are north-up in the grid CRS (UTM of the region's centre).

Rendering works block by block: a block of neighbouring cells becomes one warp of at most
:data:`MAX_BLOCK_PX` pixels a side, cut into cells. Context crops overlap and step by a
fractional number of pixels (px / context_factor); crops with the same fractional offset share
one warp, so a block of 3×-context crops costs 9 warps rather than one per cell. Memory is
bounded by the block size whatever the size of the imagery.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import shapely
from tqdm import tqdm

from zoomloc.core.atomic import atomic_path
from zoomloc.core.errors import InputError, OutsideRegionError, PyramidError
from zoomloc.core.hdf5 import take_rows
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import WGS84, ZoomGrid
from zoomloc.geo.raster import FILL_RGB, Mosaic, Source, open_source
from zoomloc.geo.tiles import tile_folders, tiles_vrt

FORMAT_VERSION = 1
MAX_BLOCK_PX = 2048
"""Longest side, in output pixels, of one warp (and of one block of cells)."""


DEFAULT_K, DEFAULT_LEVELS, DEFAULT_TERMINAL_M = 4, 3, 39.0
"""The grid's shape where neither a :class:`PyramidSpec` nor the city's region sets it."""


@dataclass(frozen=True)
class PyramidSpec:
    """What to build: the grid's shape and the views' size (the CLI's build-pyramid options).

    ``k``, ``levels`` and ``terminal_m`` left as None are the city's region's (``region.json``,
    :meth:`CityDir.read_region`) or, without one, :data:`DEFAULT_K`, :data:`DEFAULT_LEVELS` and
    :data:`DEFAULT_TERMINAL_M`.
    """

    k: int | None = None
    levels: int | None = None
    terminal_m: float | None = None
    side_m: float | None = None  # overrides terminal_m
    px: int = 128
    context_factor: float = 3.0
    bbox: tuple[float, float, float, float] | None = None  # lon/lat W, S, E, N; default: the imagery

    def __post_init__(self) -> None:
        if self.px < 1:
            raise InputError(f"views need at least 1 pixel a side (got px={self.px})")
        if not self.context_factor >= 1:
            raise InputError(f"the context crop cannot be smaller than its cell (got context factor {self.context_factor})")
        for name in ("terminal_m", "side_m"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"{name} must be a positive number of metres (got {value})")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise InputError(f"the bbox must be W S E N in degrees with W < E and S < N (got {self.bbox})")

    def grid_for(self, sources: list[Source], city: CityDir) -> ZoomGrid:
        """The city's region (``region.json``) if it has one, else the grid centred on the bbox or on
        the union of the sources' footprints.

        A region fixes the cells (a dataset's zoom paths name them), so a bbox, a side or another
        k or number of levels than the region's is refused rather than ignored. Raises
        :class:`OutsideRegionError` (naming the satellite folder) if the region misses the imagery.
        """
        imagery = shapely.union_all([s.footprint(WGS84) for s in sources])
        region = city.read_region()
        if region is not None:
            self._check_region(region, city.region_path)
            grid, where = region, f"region of {city.region_path.name}"
        else:
            bounds = self.bbox if self.bbox is not None else imagery.bounds
            k = DEFAULT_K if self.k is None else self.k
            levels = DEFAULT_LEVELS if self.levels is None else self.levels
            terminal_m = DEFAULT_TERMINAL_M if self.terminal_m is None and self.side_m is None else self.terminal_m
            grid = ZoomGrid.covering(bounds, WGS84, k=k, levels=levels, terminal_m=terminal_m, side_m=self.side_m)
            where = f"region around --bbox {' '.join(map(str, bounds))}"
        if not grid.region_polygon_lonlat().intersects(imagery):
            w, s, e, n = (round(v, 6) for v in imagery.bounds)
            raise OutsideRegionError(
                f"the {grid.side_m:.0f} m {where} does not overlap the imagery (lon {w}..{e}, lat {s}..{n})", city.satellite_dir
            )
        return grid

    def _check_region(self, region: ZoomGrid, path: Path) -> None:
        clashes = [
            f"{name} {mine}"
            for name, mine, theirs in (("k", self.k, region.k), ("levels", self.levels, region.levels))
            if mine not in (None, theirs)
        ]
        clashes += [f"{name} {getattr(self, name)}" for name in ("terminal_m", "side_m", "bbox") if getattr(self, name) is not None]
        if clashes:
            raise InputError(
                f"fixes the grid (k={region.k}, levels={region.levels}, a {region.side_m:.0f} m square); "
                f"drop the other settings ({', '.join(clashes)})",
                path,
            )


def open_imagery(city: CityDir) -> list[Source]:
    """The city's imagery: ``satellite/*.tif`` and its tile folders (as VRTs in ``tiles/``, :mod:`zoomloc.geo.tiles`)."""
    folders = tile_folders(city.satellite_dir)
    files = city.satellite_files(required=not folders)
    return [open_source(p) for p in files] + [open_source(tiles_vrt(folder, city.tiles_dir)) for folder in folders]


def spec_mismatch(path: str | os.PathLike, spec: PyramidSpec, city_dir: str | os.PathLike) -> str | None:
    """How the existing pyramid ``path`` differs from what ``spec`` builds from ``city_dir``'s imagery, or None.

    A pipeline that finds a pyramid reuses it; one built with other settings would silently
    give a benchmark another grid than its config states.
    """
    city = CityDir(city_dir)
    wanted = spec.grid_for(open_imagery(city), city)
    with PyramidReader(path) as pyr:
        have, px, context = pyr.grid, pyr.px, pyr.context_factor
    if not have.same_region(wanted, tol_m=0.01):
        return (
            f"its grid is {have.k}x{have.k} over {have.levels} levels of a {have.side_m:.0f} m region, "
            f"the config's {wanted.k}x{wanted.k} over {wanted.levels} levels of {wanted.side_m:.0f} m"
        )
    if px != spec.px or context != spec.context_factor:
        return f"its views are {px} px with context factor {context:g}, the config's {spec.px} px with {spec.context_factor:g}"
    return None


@dataclass(frozen=True)
class PyramidSummary:
    """What :func:`build_pyramid` did, for the CLI to print."""

    path: Path
    grid: ZoomGrid
    px: int
    n_views: int
    coverage: float  # fraction of the region with imagery
    source_mpx: float  # source pixels read, millions
    seconds: float

    def describe(self) -> str:
        g = self.grid
        return "\n".join(
            [
                f"wrote {self.path}",
                f"grid: {g.crs.name}, side {g.side_m:.1f} m, terminal cell {g.terminal_m:.2f} m, k={g.k}, levels={g.levels}",
                f"views: {self.n_views} of {self.px}x{self.px} px; imagery covers {self.coverage:.1%} of the region",
                f"read {self.source_mpx:.1f} Mpx of source imagery in {self.seconds:.1f} s "
                f"({self.source_mpx / max(self.seconds, 1e-9):.1f} Mpx/s)",
            ]
        )


@dataclass(frozen=True)
class _Layer:
    """One stored array of views: the cells of one level, each rendered as a crop centred on it."""

    views: str  # dataset name
    coverage: str
    n: int  # cells per side
    cell_m: float
    crop_m: float  # side of the rendered crop: the cell itself, or the cell with context

    def step_px(self, px: int) -> float:
        """Pixels from one crop to the next (fractional, and < px, when crops overlap)."""
        return px * self.cell_m / self.crop_m


def _layers(grid: ZoomGrid, context_factor: float) -> list[_Layer]:
    levels = [
        _Layer(f"views/level_{lv}", f"coverage/level_{lv}", grid.cells_per_side(lv), grid.cell_size(lv), grid.cell_size(lv))
        for lv in range(grid.levels)
    ]
    t = grid.terminal_m
    return [*levels, _Layer("context/terminal", "coverage/terminal", grid.cells_per_side(grid.levels), t, context_factor * t)]


def build_pyramid(
    city_dir: str | os.PathLike, spec: PyramidSpec, *, out: str | os.PathLike | None = None, progress: bool = True
) -> PyramidSummary:
    """Render the pyramid of ``city_dir``'s imagery (GeoTIFFs, tile folders) to ``out`` (default ``CITY_DIR/pyramid.h5``).

    Every source is validated before anything is written; the file appears only once complete.
    """
    started = time.perf_counter()
    city = CityDir(city_dir)
    sources = open_imagery(city)
    grid = spec.grid_for(sources, city)
    out = city.pyramid_path if out is None else Path(out)
    layers = _layers(grid, spec.context_factor)
    coverage: dict[str, np.ndarray] = {}
    with Mosaic(sources, grid.crs) as mosaic, atomic_path(out) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(grid.to_attrs())
        h5.attrs.update(
            format_version=FORMAT_VERSION,
            px=spec.px,
            context_factor=spec.context_factor,
            fill_rgb=FILL_RGB,
            sources=json.dumps([s.record() for s in sources]),
        )
        bar = tqdm(total=sum(layer.n**2 for layer in layers), unit="cell", desc="build-pyramid", disable=not progress)
        with bar:
            for layer in layers:
                coverage[layer.coverage] = _render_layer(mosaic, grid, layer, spec.px, h5, bar)
        for name, values in coverage.items():
            h5.create_dataset(name, data=values)
    return PyramidSummary(
        path=out,
        grid=grid,
        px=spec.px,
        n_views=sum(layer.n**2 for layer in layers),
        coverage=float(coverage["coverage/level_0"][0]),
        source_mpx=mosaic.source_mpx,
        seconds=time.perf_counter() - started,
    )


def _render_layer(mosaic: Mosaic, grid: ZoomGrid, layer: _Layer, px: int, h5: h5py.File, bar: tqdm) -> np.ndarray:
    """Render and store every view of ``layer``; return the cells' coverage fractions."""
    n = layer.n
    views = h5.create_dataset(layer.views, (n * n, px, px, 3), np.uint8, chunks=(1, px, px, 3))
    coverage = np.zeros((n, n), np.float32)
    block = max(1, min(int((MAX_BLOCK_PX - px) // layer.step_px(px)) + 1, MAX_BLOCK_PX // px))
    for rows, cols in _blocks(n, block):
        rgb, coverage[rows, cols] = _render_block(mosaic, grid, layer, px, rows, cols)
        for i, row in enumerate(range(rows.start, rows.stop)):
            views[row * n + cols.start : row * n + cols.stop] = rgb[i]
        bar.update(rgb.shape[0] * rgb.shape[1])
    return coverage.ravel()


def _blocks(n: int, size: int) -> Iterator[tuple[slice, slice]]:
    """Square blocks of at most ``size`` cells a side tiling an ``n×n`` grid of cells."""
    for r in range(0, n, size):
        for c in range(0, n, size):
            yield slice(r, min(r + size, n)), slice(c, min(c + size, n))


def _render_block(mosaic: Mosaic, grid: ZoomGrid, layer: _Layer, px: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Views ``[rows, cols, px, px, 3]`` and cell coverage ``[rows, cols]`` of a block of cells."""
    res = layer.crop_m / px
    margin = (layer.crop_m - layer.cell_m) / 2
    west = grid.origin_x + cols.start * layer.cell_m - margin
    north = grid.origin_y - rows.start * layer.cell_m + margin
    step = layer.step_px(px)
    nr, nc = rows.stop - rows.start, cols.stop - cols.start
    rgb = np.empty((nr, nc, px, px, 3), np.uint8)
    alpha = np.empty((nr, nc, px, px), np.float32)
    for y0, ri, yoff in _phases(np.arange(nr) * step):
        for x0, ci, xoff in _phases(np.arange(nc) * step):
            img = mosaic.render(west + x0 * res, north - y0 * res, res, int(xoff[-1]) + px, int(yoff[-1]) + px)
            for r, oy in zip(ri, yoff):
                for c, ox in zip(ci, xoff):
                    rgb[r, c] = img.rgb[oy : oy + px, ox : ox + px]
                    alpha[r, c] = img.alpha[oy : oy + px, ox : ox + px]
    # The cell is the central cell_m of each crop; weigh pixels by how much of them it covers.
    pixel = np.arange(px)
    lo, hi = margin / res, (margin + layer.cell_m) / res
    w = np.clip(np.minimum(pixel + 1, hi) - np.maximum(pixel, lo), 0.0, 1.0)
    coverage = np.einsum("rcij,i,j->rc", alpha, w, w) / (hi - lo) ** 2
    return rgb, coverage


def _phases(offsets: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Group increasing crop offsets (in pixels, fractional) by their fractional part.

    Returns, per group: the pixel offset where one rendering for the group starts, the indexes
    of its crops, and their whole-pixel offsets inside that rendering. Crops of the same group
    are exact integer windows of one warp.
    """
    whole = np.floor(offsets + 1e-6)
    frac = np.round(offsets - whole, 4)
    groups = []
    for f in np.unique(frac):
        idx = np.flatnonzero(frac == f)
        start = whole[idx[0]]
        groups.append((float(start + f), idx, (whole[idx] - start).astype(np.int64)))
    return groups


class PyramidReader:
    """Views of a pyramid file, read on demand.

    ::

        with PyramidReader("cities/demo/pyramid.h5") as pyr:
            pyr.check_grid(expected_grid)
            root = pyr.views(0, [0])                    # [1, px, px, 3] uint8
            seen = pyr.views_of_paths(paths)            # [n, l, px, px, 3]: the zoom along each path
            db = pyr.context(np.arange(pyr.grid.n_cells(pyr.grid.levels)))

    The file is opened (and validated) on first use, not at construction, and a reader pickles
    as its path: handed to DataLoader workers, each opens its own HDF5 handle.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._grid: ZoomGrid | None = None

    def __enter__(self) -> PyramidReader:
        self._file()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    @property
    def grid(self) -> ZoomGrid:
        self._file()
        return self._grid

    @property
    def px(self) -> int:
        return int(self._file().attrs["px"])

    @property
    def context_factor(self) -> float:
        return float(self._file().attrs["context_factor"])

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The GeoTIFFs the pyramid was built from (file, size, mtime, crs, ...)."""
        return json.loads(self._file().attrs["sources"])

    def views(self, level: int, cells) -> np.ndarray:
        """Views ``[n, px, px, 3]`` uint8 of cell indices ``cells`` of ``level`` (0..L-1)."""
        if not 0 <= level < self.grid.levels:
            raise IndexError(f"level {level} has no views; levels are 0..{self.grid.levels - 1} (terminal cells: context())")
        return take_rows(self._file()[f"views/level_{level}"], cells)

    def views_of_paths(self, paths) -> np.ndarray:
        """The views a zoom along each path looks at, before each of its actions.

        ``paths`` is ``[n, l]`` (equal lengths, l <= L); the result is ``[n, l, px, px, 3]`` where
        ``[:, i]`` is the view of the prefix ``paths[:, :i]`` (a cell of level i). One read per
        prefix length, for the whole batch.
        """
        paths = np.asarray(paths, dtype=np.int64)
        if paths.ndim != 2:
            raise ValueError(f"paths must be [n, l], got shape {paths.shape}")
        n, length = paths.shape
        out = np.empty((n, length, self.px, self.px, 3), np.uint8)
        for i in range(length):
            out[:, i] = self.views(i, self.grid.cell_of_path(paths[:, :i]))
        return out

    def context(self, cells) -> np.ndarray:
        """Context crops ``[n, px, px, 3]`` uint8 of terminal cell indices ``cells``."""
        return take_rows(self._file()["context/terminal"], cells)

    def coverage(self, level: int) -> np.ndarray:
        """Fraction of each cell of ``level`` with imagery; ``level == L`` gives the terminal cells."""
        if not 0 <= level <= self.grid.levels:
            raise IndexError(f"level {level} is not in 0..{self.grid.levels}")
        name = "coverage/terminal" if level == self.grid.levels else f"coverage/level_{level}"
        return self._file()[name][()]

    def check_grid(self, expected: ZoomGrid) -> None:
        """Raise :class:`PyramidError` unless the pyramid was built for ``expected``'s cells."""
        if not self.grid.same_region(expected):
            g = self.grid
            raise PyramidError(
                f"was built for another grid (side {g.side_m:.1f} m at ({g.origin_x:.1f}, {g.origin_y:.1f}), "
                f"k={g.k}, levels={g.levels}, {g.crs.name}); rebuild it with zoomloc build-pyramid",
                self.path,
            )

    def _file(self) -> h5py.File:
        if self._h5 is None:
            self._h5, self._grid = _open_validated(self.path)
        return self._h5


def _open_validated(path: Path) -> tuple[h5py.File, ZoomGrid]:
    """Open a pyramid file and check its version, attributes and datasets."""
    if not path.is_file():
        raise PyramidError("no such pyramid file (build it with zoomloc build-pyramid)", path)
    try:
        h5 = h5py.File(path, "r")
    except OSError:
        raise PyramidError("not a readable zoomloc pyramid (truncated or corrupt)", path) from None
    try:
        version = h5.attrs.get("format_version")
        if version is None:
            raise PyramidError("not a zoomloc pyramid (no format_version attribute)", path)
        if int(version) != FORMAT_VERSION:
            raise PyramidError(
                f"is a pyramid of format version {int(version)}; this zoomloc reads version {FORMAT_VERSION} "
                "(rebuild it with zoomloc build-pyramid)",
                path,
            )
        try:
            grid = ZoomGrid.from_attrs(h5.attrs)
            px, context_factor = int(h5.attrs["px"]), float(h5.attrs["context_factor"])
        except KeyError as exc:
            raise PyramidError(f"not a complete zoomloc pyramid (no attribute {exc})", path) from None
        for layer in _layers(grid, context_factor):
            for name, shape in ((layer.views, (layer.n**2, px, px, 3)), (layer.coverage, (layer.n**2,))):
                if not isinstance(h5.get(name), h5py.Dataset):
                    raise PyramidError(f"not a complete zoomloc pyramid (no dataset {name})", path)
                if h5[name].shape != shape:
                    raise PyramidError(f"dataset {name} has shape {h5[name].shape}, expected {shape}", path)
    except BaseException:
        h5.close()
        raise
    return h5, grid
