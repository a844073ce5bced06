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
alpha for RGBA tiles) and 0 in the holes. :func:`zoomloc.geo.raster.open_source` validates the VRT
as it does a GeoTIFF and :class:`~zoomloc.geo.raster.Mosaic` warps it: the builder is unchanged and
nothing is read over a network. The VRTs are written under ``CITY_DIR/tiles/`` (one per folder,
rewritten by each build, which a GIS can open too).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    """Write the VRT mosaic of the tile ``folder`` (see the module doc) into ``out_dir``; its path.

    Raises :class:`InputError` naming the file at fault: a layout.yaml missing or unreadable, a
    zoom level it names absent, tiles of mixed sizes or unreadable ones.
    """
    crs, tiles = _layout_tiles(folder) if (folder / LAYOUT_FILE).is_file() else _xyz_tiles(folder)
    out = out_dir / f"{folder.name}.vrt"
    write_text(out, _vrt_xml(crs, tiles, folder))
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


def _layout_tiles(folder: Path) -> tuple[CRS, list[Tile]]:
    """The CRS and the tiles of the deepest zoom of a tiledwebmaps folder, placed by its layout."""
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
    level = folder / str(zoom)
    if not level.is_dir():
        raise InputError(f"max_zoom is {zoom} but the folder has no zoom level {zoom} ({level.name}/ is absent)", layout_file)
    with _tiledwebmaps() as twm:
        try:
            layout = twm.Layout.from_yaml(cfg)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise InputError(f"is not a tiledwebmaps layout ({exc})", layout_file) from None

        def bounds(x: int, y: int) -> Bounds:
            corners = np.array([layout.tile_to_crs(np.array([x + dx, y + dy], float), zoom) for dx in (0, 1) for dy in (0, 1)])
            return (*corners.min(axis=0), *corners.max(axis=0))

        tiles = _scan(level, suffix, bounds)
    return crs, tiles


def _crs(value: Any, layout_file: Path) -> CRS:
    try:
        return CRS.from_user_input(value)
    except CRSError:
        raise InputError(f"crs {value!r} is not a coordinate reference system PROJ knows", layout_file) from None


# ----------------------------------------------------------------------------- XYZ folders
def _xyz_tiles(folder: Path) -> tuple[CRS, list[Tile]]:
    """The tiles of the deepest zoom level of an XYZ folder, in web mercator."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    zoom = _deepest_zoom(folder)
    suffixes = {p.suffix.lower() for p in (folder / str(zoom)).glob("*/*") if p.suffix.lower() in TILE_SUFFIXES}
    if len(suffixes) != 1:
        found = ", ".join(sorted(suffixes)) or "none"
        raise InputError(f"zoom level {zoom} must hold tiles of one kind, .png or .jpg (found {found})", folder / str(zoom))

    def bounds(x: int, y: int) -> Bounds:
        if not (0 <= x < 2**zoom and 0 <= y < 2**zoom):
            raise InputError(f"tile {x}/{y} does not exist at zoom {zoom} (0..{2**zoom - 1})", folder / str(zoom) / str(x))
        b = tms.xy_bounds(x, y, zoom)
        return b.left, b.bottom, b.right, b.top

    return CRS.from_epsg(3857), _scan(folder / str(zoom), suffixes.pop(), bounds)


def _deepest_zoom(folder: Path) -> int:
    zooms = [int(p.name) for p in folder.iterdir() if p.is_dir() and _INT.match(p.name)]
    if not zooms:
        raise InputError("holds no zoom level folder ({z}/{x}/{y}.png|jpg)", folder)
    return max(zooms)


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


def _vrt_xml(crs: CRS, tiles: list[Tile], folder: Path) -> str:
    """A north-up VRT of ``tiles`` (bands red, green, blue, alpha) on the grid of their pixels."""
    w, h = tiles[0].size
    b = np.array([t.bounds for t in tiles])
    res_x, res_y = (b[0, 2] - b[0, 0]) / w, (b[0, 3] - b[0, 1]) / h
    west, north = b[:, 0].min(), b[:, 3].max()
    cols = np.rint((b[:, 0] - west) / res_x).astype(np.int64)
    rows = np.rint((north - b[:, 3]) / res_y).astype(np.int64)
    if np.abs(cols * res_x - (b[:, 0] - west)).max() > 0.01 * res_x or np.abs(rows * res_y - (north - b[:, 3])).max() > 0.01 * res_y:
        raise InputError("tiles do not fall on one pixel grid (a layout with rotated axes?)", folder)
    width = int(cols.max()) + w
    height = int(rows.max()) + h
    bands = []
    for band, name in enumerate(("Red", "Green", "Blue", "Alpha"), start=1):
        sources = "".join(_source(t, band, col, row) for t, col, row in zip(tiles, cols, rows))
        bands.append(f'<VRTRasterBand dataType="Byte" band="{band}"><ColorInterp>{name}</ColorInterp>{sources}</VRTRasterBand>\n')
    geotransform = ", ".join(repr(float(v)) for v in (west, res_x, 0, north, 0, -res_y))
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
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
