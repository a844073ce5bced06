"""Web-map tile folders as GDAL datasets, so that the pyramid builder reads them like any GeoTIFF.

Two layouts are read from ``CITY_DIR/satellite/``:

* a **tiledwebmaps folder** (any sub-folder holding ``layout.yaml``, or ``satellite/`` itself): the
  layout (CRS, tile size in pixels and in CRS units, origin, axes) is parsed and placed by the
  ``tiledwebmaps`` library, the format's own reader; its tiles lie at the layout's ``path``
  (``{zoom}/{x}/{y}.jpg`` by default), zoom 0 and the levels below it (``-1``: tiles twice as large);
* an **XYZ folder** ``satellite/xyz/{z}/{x}/{y}.png|jpg``: web-mercator slippy tiles, y counted
  from the north, placed by morecantile's ``WebMercatorQuad``.

Each folder becomes a VRT mosaic of its deepest (finest) zoom level present: one source per tile
at its place on a north-up canvas, plus an alpha band that is 255 where a tile lies (a tile's own
alpha for RGBA tiles) and 0 in the holes. Each coarser zoom level present that covers every
tile of the deepest one becomes an overview of it (a VRT of its own on the same canvas): a coarse
pyramid level (a 10 km square in a few hundred pixels) then reads the tiles made for that scale,
not every tile of the finest one. :func:`zoomloc.geo.raster.open_source` validates the VRT
as it does a GeoTIFF and :class:`~zoomloc.geo.raster.Mosaic` warps it: the builder is unchanged and
nothing is read over a network. The VRTs are written under ``CITY_DIR/tiles/`` (one per folder,
rewritten by each build, which a GIS can open too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError
from pyproj import CRS
from pyproj.exceptions import CRSError

from zoomloc.core.atomic import write_text
from zoomloc.core.errors import InputError

LAYOUT_FILE = "layout.yaml"
XYZ_FOLDER = "xyz"
TILE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MODES = {"RGB": (1, 2, 3), "RGBA": (1, 2, 3), "L": (1, 1, 1), "LA": (1, 1, 1)}  # tile mode -> source band of R, G, B
_ALPHA_BAND = {"RGBA": 4, "LA": 2}
_INT = re.compile(r"^-?\d+$")

Bounds = tuple[float, float, float, float]  # west, south, east, north in the tile CRS


@dataclass(frozen=True)
class Tile:
    """One tile file of the chosen zoom level, where it lies, and how its bands are laid out."""

    path: Path
    bounds: Bounds
    size: tuple[int, int]  # width, height in pixels
    mode: str


def tile_folders(satellite_dir: Path) -> list[Path]:
    """The tile folders of ``satellite_dir``: tiledwebmaps folders (``layout.yaml``) and ``xyz/``, sorted."""
    if not satellite_dir.is_dir():
        return []
    candidates = [satellite_dir, *sorted(p for p in satellite_dir.iterdir() if p.is_dir() and not p.name.startswith("."))]
    return [p for p in candidates if (p / LAYOUT_FILE).is_file() or (p.name == XYZ_FOLDER and p != satellite_dir)]


def tiles_vrt(folder: Path, out_dir: Path) -> Path:
    """Write the VRT mosaic of the tile ``folder`` (see the module doc), with its overviews, into ``out_dir``; its path.

    Raises :class:`InputError` naming the file at fault: a layout.yaml missing or unreadable, a
    zoom level it names absent, tiles of mixed sizes or unreadable ones.
    """
    crs, levels = _layout_levels(folder) if (folder / LAYOUT_FILE).is_file() else _xyz_levels(folder)
    _, base = levels[0]
    canvas = _Canvas.of(base, folder)
    overviews = []
    for zoom, tiles in levels[1:]:
        factor = round(_res(tiles)[0] / canvas.res_x)
        if factor >= 2 and np.isclose(_res(tiles)[0], factor * canvas.res_x, rtol=1e-6) and _covers(tiles, base):
            name = f"{folder.name}.z{zoom}.vrt"
            write_text(out_dir / name, _vrt_xml(crs, tiles, canvas.coarser(factor), folder))
            overviews.append(name)
    out = out_dir / f"{folder.name}.vrt"
    write_text(out, _vrt_xml(crs, base, canvas, folder, overviews))
    return out


# ----------------------------------------------------------------------------- tiledwebmaps layouts
@contextlib.contextmanager
def _tiledwebmaps() -> Iterator[Any]:
    """The ``tiledwebmaps`` module, with PROJ_DATA pointing at its own PROJ data while it is used.

    Importing it overwrites the process's PROJ_DATA with the data of the PROJ it embeds; left so,
    rasterio and pyproj, built against other PROJ versions, could later read a proj.db they cannot
    use. The variable is set for the library's calls and restored after them.
    """
    previous = os.environ.get("PROJ_DATA")
    import tiledwebmaps

    os.environ["PROJ_DATA"] = tiledwebmaps.new_proj_data
    try:
        yield tiledwebmaps
    finally:
        if previous is None:
            os.environ.pop("PROJ_DATA", None)
        else:
            os.environ["PROJ_DATA"] = previous


def _layout_levels(folder: Path) -> tuple[CRS, list[tuple[int, list[Tile]]]]:
    """The CRS and the tiles of each zoom level of a tiledwebmaps folder (its max_zoom, then the coarser
    ones present down to its min_zoom), placed by its layout."""
    layout_file = folder / LAYOUT_FILE
    try:
        cfg = yaml.safe_load(layout_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"is not a readable YAML file ({str(exc).splitlines()[0]})", layout_file) from None
    if not isinstance(cfg, dict):
        raise InputError("is not a tiledwebmaps layout (a YAML mapping)", layout_file)
    if (folder / "images.dat").exists():
        raise InputError("is a packed tiledwebmaps folder (images.dat); unpack it to tile files first", folder)
    if "url" in cfg:
        raise InputError("names a tile server (url); zoomloc reads tiles from disk only: download them first", layout_file)
    missing = [key for key in ("crs", "min_zoom", "max_zoom") if key not in cfg] if "preset" not in cfg else []
    if missing:
        raise InputError(f"lacks {', '.join(missing)}", layout_file)
    pattern = str(cfg.get("path", "{zoom}/{x}/{y}.jpg"))
    suffix = Path(pattern).suffix.lower()
    if pattern != "{zoom}/{x}/{y}" + Path(pattern).suffix or suffix not in TILE_SUFFIXES:
        raise InputError(f"path {pattern!r}: zoomloc reads tiles at {{zoom}}/{{x}}/{{y}}.jpg or .png", layout_file)
    crs = CRS.from_epsg(3857) if "preset" in cfg else _crs(cfg["crs"], layout_file)
    zoom = int(cfg["max_zoom"]) if "preset" not in cfg else _deepest_zoom(folder)
    if not (folder / str(zoom)).is_dir():
        raise InputError(f"max_zoom is {zoom} but the folder has no zoom level {zoom} ({zoom}/ is absent)", layout_file)
    lowest = int(cfg.get("min_zoom", zoom))
    zooms = [z for z in range(zoom, lowest - 1, -1) if (folder / str(z)).is_dir()]
    with _tiledwebmaps() as twm:
        try:
            layout = twm.Layout.from_yaml(cfg)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise InputError(f"is not a tiledwebmaps layout ({exc})", layout_file) from None

        def bounds(z: int, x: int, y: int) -> Bounds:
            corners = np.array([layout.tile_to_crs(np.array([x + dx, y + dy], float), z) for dx in (0, 1) for dy in (0, 1)])
            return (*corners.min(axis=0), *corners.max(axis=0))

        levels = [(z, _scan(folder / str(z), suffix, partial(bounds, z))) for z in zooms]
    return crs, levels


def _crs(value: Any, layout_file: Path) -> CRS:
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise InputError(f"crs {value!r} is not a coordinate reference system PROJ knows", layout_file) from None


# ----------------------------------------------------------------------------- XYZ folders
def _xyz_levels(folder: Path) -> tuple[CRS, list[tuple[int, list[Tile]]]]:
    """The tiles of each zoom level of an XYZ folder, deepest first, in web mercator."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")

    def bounds(zoom: int, x: int, y: int) -> Bounds:
        if not (0 <= x < 2**zoom and 0 <= y < 2**zoom):
            raise InputError(f"tile {x}/{y} does not exist at zoom {zoom} (0..{2**zoom - 1})", folder / str(zoom) / str(x))
        b = tms.xy_bounds(x, y, zoom)
        return b.left, b.bottom, b.right, b.top

    levels = []
    for zoom in _zooms(folder):
        suffixes = {p.suffix.lower() for p in (folder / str(zoom)).glob("*/*") if p.suffix.lower() in TILE_SUFFIXES}
        if len(suffixes) != 1:
            found = ", ".join(sorted(suffixes)) or "none"
            raise InputError(f"zoom level {zoom} must hold tiles of one kind, .png or .jpg (found {found})", folder / str(zoom))
        levels.append((zoom, _scan(folder / str(zoom), suffixes.pop(), partial(bounds, zoom))))
    return CRS.from_epsg(3857), levels


def _zooms(folder: Path) -> list[int]:
    """The zoom levels of a folder, deepest first."""
    zooms = sorted((int(p.name) for p in folder.iterdir() if p.is_dir() and _INT.match(p.name)), reverse=True)
    if not zooms:
        raise InputError("holds no zoom level folder ({z}/{x}/{y}.png|jpg)", folder)
    return zooms


def _deepest_zoom(folder: Path) -> int:
    return _zooms(folder)[0]


# ----------------------------------------------------------------------------- tiles and the VRT
def _scan(level: Path, suffix: str, bounds: Callable[[int, int], Bounds]) -> list[Tile]:
    """Every ``{x}/{y}<suffix>`` tile of a zoom level folder, checked to share one size."""
    tiles: list[Tile] = []
    for column in sorted(p for p in level.iterdir() if p.is_dir() and _INT.match(p.name)):
        for path in sorted(column.glob(f"*{suffix}")):
            if not _INT.match(path.stem):
                continue
            size, mode = _header(path)
            if tiles and size != tiles[0].size:
                w, h = tiles[0].size
                raise InputError(
                    f"is {size[0]}×{size[1]} px, unlike the {w}×{h} px of {tiles[0].path}: tiles of one level share a size", path
                )
            tiles.append(Tile(path, bounds(int(column.name), int(path.stem)), size, mode))
    if not tiles:
        raise InputError(f"holds no tile ({{x}}/{{y}}{suffix})", level)
    return tiles


def _header(path: Path) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as img:
            size, mode = img.size, img.mode
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"is not a readable tile image ({exc})", path) from None
    if mode not in _MODES:
        raise InputError(f"is a {mode} image; tiles must be RGB, RGBA or greyscale (no palette)", path)
    return size, mode


def _res(tiles: list[Tile]) -> tuple[float, float]:
    """The CRS units per pixel of tiles of one level (east, south)."""
    w, h = tiles[0].size
    west, south, east, north = tiles[0].bounds
    return (east - west) / w, (north - south) / h


@dataclass(frozen=True)
class _Canvas:
    """The north-up pixel grid of a VRT: its north-west corner, pixel size and size in pixels."""

    west: float
    north: float
    res_x: float
    res_y: float
    width: int
    height: int

    @classmethod
    def of(cls, tiles: list[Tile], folder: Path) -> _Canvas:
        """The grid the tiles span at their own resolution."""
        b = np.array([t.bounds for t in tiles])
        res_x, res_y = _res(tiles)
        canvas = cls(b[:, 0].min(), b[:, 3].max(), res_x, res_y, 0, 0)
        cols, rows = canvas.place(tiles, folder)
        w, h = tiles[0].size
        return dataclasses.replace(canvas, width=int(cols.max()) + w, height=int(rows.max()) + h)

    def coarser(self, factor: int) -> _Canvas:
        """The same area ``factor`` times coarser: what GDAL reads as an overview of this canvas."""
        return _Canvas(self.west, self.north, self.res_x * factor, self.res_y * factor, -(-self.width // factor), -(-self.height // factor))

    def place(self, tiles: list[Tile], folder: Path) -> tuple[np.ndarray, np.ndarray]:
        """Each tile's pixel offset (column, row) on this grid; refused unless they fall on its pixels."""
        b = np.array([t.bounds for t in tiles])
        x, y = (b[:, 0] - self.west) / self.res_x, (self.north - b[:, 3]) / self.res_y
        cols, rows = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
        if np.abs(cols - x).max() > 0.01 or np.abs(rows - y).max() > 0.01:
            raise InputError("tiles do not fall on one pixel grid (a layout with rotated axes?)", folder)
        return cols, rows


def _covers(coarse: list[Tile], fine: list[Tile]) -> bool:
    """Whether every fine tile's centre lies in a coarse tile: a level that does can stand in for the fine one."""
    c = np.array([t.bounds for t in coarse])
    f = np.array([t.bounds for t in fine])
    size_x, size_y = c[0, 2] - c[0, 0], c[0, 3] - c[0, 1]
    have = {(int(i), int(j)) for i, j in zip(np.rint((c[:, 0] - c[0, 0]) / size_x), np.rint((c[0, 3] - c[:, 3]) / size_y))}
    i = np.floor(((f[:, 0] + f[:, 2]) / 2 - c[0, 0]) / size_x)
    j = np.floor((c[0, 3] - (f[:, 1] + f[:, 3]) / 2) / size_y)
    return all((int(a), int(b)) in have for a, b in zip(i, j))


def _vrt_xml(crs: CRS, tiles: list[Tile], canvas: _Canvas, folder: Path, overviews: Sequence[str] = ()) -> str:
    """A VRT of ``tiles`` on ``canvas`` (bands red, green, blue, alpha), with the VRT files ``overviews``
    (beside it, finest first) as its overviews."""
    cols, rows = canvas.place(tiles, folder)
    bands = []
    for band, name in enumerate(("Red", "Green", "Blue", "Alpha"), start=1):
        sources = "".join(_source(t, band, col, row) for t, col, row in zip(tiles, cols, rows))
        links = "".join(
            f'<Overview><SourceFilename relativeToVRT="1">{escape(o)}</SourceFilename><SourceBand>{band}</SourceBand></Overview>'
            for o in overviews
        )
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}"><ColorInterp>{name}</ColorInterp>{links}{sources}</VRTRasterBand>\n')
    geotransform = ", ".join(repr(float(v)) for v in (canvas.west, canvas.res_x, 0, canvas.north, 0, -canvas.res_y))
    return (
        f'<VRTDataset rasterXSize="{canvas.width}" rasterYSize="{canvas.height}">\n'
        f"<SRS>{escape(crs.to_wkt())}</SRS>\n<GeoTransform>{geotransform}</GeoTransform>\n{''.join(bands)}</VRTDataset>\n"
    )


def _source(tile: Tile, band: int, col: int, row: int) -> str:
    """The VRT source that puts ``band`` (1-4: R, G, B, alpha) of ``tile`` at its place."""
    w, h = tile.size
    rects = f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{col}" yOff="{row}" xSize="{w}" ySize="{h}"/>'
    name = f'<SourceFilename relativeToVRT="0">{escape(str(tile.path.resolve()))}</SourceFilename>'
    if band <= 3:
        return f"<SimpleSource>{name}<SourceBand>{_MODES[tile.mode][band - 1]}</SourceBand>{rects}</SimpleSource>"
    if tile.mode in _ALPHA_BAND:
        return f"<SimpleSource>{name}<SourceBand>{_ALPHA_BAND[tile.mode]}</SourceBand>{rects}</SimpleSource>"
    # An opaque tile: its first band scaled by 0 and offset by 255, i.e. 255 wherever the tile lies.
    return f"<ComplexSource>{name}<SourceBand>1</SourceBand>{rects}<ScaleOffset>255</ScaleOffset><ScaleRatio>0</ScaleRatio></ComplexSource>"
