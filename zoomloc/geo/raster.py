"""Reading satellite GeoTIFFs: validate them, place them, and render them as one RGB mosaic.

A city's imagery is any number of GeoTIFFs in any CRS, resolution, band layout and data type.
This module hides all of that behind two things:

* :func:`open_source` validates one file once, up front (is it a GeoTIFF, is it georeferenced,
  which bands are colour and which alpha, how to map its values to 0..255) and returns a
  :class:`Source`. A problem a user can cause is reported as one
  :class:`~zoomloc.core.errors.ZoomlocError` naming the file: here, before any work is done, or,
  for damage found only when pixels are read (a truncated file), at that read.
* :class:`Mosaic` renders the union of the sources onto any north-up pixel grid of a target CRS
  (one GDAL warp per source, ``Resampling.average`` so that shrinking averages rather than
  aliases), reading from the finest source overview that is not finer than the output needs.
  Only the requested area is read: memory is bounded by the output size, never the mosaic's.

Colour: 8-bit RGB is kept as is; one band is shown as grey (R=G=B); any other data type (uint16
satellite products, floats) is stretched linearly so that the 2nd..98th percentile of the
source's valid values (pooled over its colour bands, from a decimated read, computed once per
source) maps to 0..255, clipped. Validity: an alpha band, the nodata value or an internal mask,
whichever the file has (GDAL's warper honours all three); areas without imagery are filled with
:data:`FILL_RGB` and reported through the alpha plane of :class:`Rendered`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import from_origin
from rasterio.warp import reproject

from zoomloc.core.errors import GeoreferenceError, InputError

FILL_RGB = (0, 0, 0)
"""Colour of areas without imagery (the coverage arrays say where they are)."""

STRETCH_PERCENTILES = (2.0, 98.0)
"""Source values at these percentiles map to 0 and 255 for inputs other than 8-bit."""

_STRETCH_SAMPLE_PX = 1024  # longest side of the decimated read that the stretch is computed from
_FOOTPRINT_EDGE_POINTS = 32  # edges are densified: straight in the source CRS, curved elsewhere


@dataclass(frozen=True)
class Source:
    """One validated GeoTIFF: where it lies and how its bands become RGB."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    colour_bands: tuple[int, ...]  # 1-based; three (RGB) or one (grey)
    alpha_band: int | None  # 1-based, or None when validity comes from nodata / a mask / nothing
    overviews: tuple[int, ...]  # decimation factors, finest first
    stretch: tuple[float, float] | None  # source values mapped to 0 and 255; None for 8-bit
    size: int
    mtime: float

    def footprint(self, crs: Any) -> shapely.Polygon:
        """The image's outline (its four pixel corners, edges densified) in ``crs``."""
        corners = [self.transform @ xy for xy in ((0, 0), (self.width, 0), (self.width, self.height), (0, self.height))]
        outline = shapely.Polygon(corners)
        outline = shapely.segmentize(outline, outline.length / (4 * _FOOTPRINT_EDGE_POINTS))
        to_crs = Transformer.from_crs(self.crs, CRS.from_user_input(crs), always_xy=True)
        return shapely.transform(outline, lambda xy: np.column_stack(to_crs.transform(xy[:, 0], xy[:, 1])))

    def record(self) -> dict[str, Any]:
        """What the pyramid stores about this source, to tell later whether it changed."""
        return {
            "file": self.path.name,
            "size": self.size,
            "mtime": self.mtime,
            "crs": self.crs.to_string(),
            "width": self.width,
            "height": self.height,
            "dtype": self.dtype,
            "bands": "grey" if len(self.colour_bands) == 1 else "rgb",
            "alpha": self.alpha_band is not None,
            "stretch": self.stretch,
        }

    def to_rgb8(self, values: np.ndarray) -> np.ndarray:
        """Warped colour bands ``[len(colour_bands), H, W]`` float32 → RGB ``[H, W, 3]`` uint8.

        Works in place on ``values`` (the warp's own buffer): on 2048² blocks, temporaries and
        boolean indexing would cost more than the warp.
        """
        if self.stretch is not None:
            lo, hi = self.stretch
            values -= lo
            values *= 255.0 / (hi - lo)
        np.rint(values, out=values)
        np.clip(values, 0, 255, out=values)
        rgb8 = np.moveaxis(values, 0, -1).astype(np.uint8)
        return np.broadcast_to(rgb8, (*rgb8.shape[:2], 3))


def open_source(path: str | os.PathLike) -> Source:
    """Validate the GeoTIFF at ``path``; raise an :class:`InputError` naming it if unusable."""
    path = Path(path)
    with _open(path) as ds:
        if ds.driver not in ("GTiff", "VRT"):  # a VRT: a tile folder's mosaic (zoomloc.geo.tiles)
            raise InputError(f"is a {ds.driver} file, not a GeoTIFF", path)
        _check_georeferenced(ds, path)
        colour, alpha = _interpret_bands(ds, path)
        dtype = ds.dtypes[colour[0] - 1]
        if np.dtype(dtype).kind not in "uif":
            raise InputError(f"has {dtype} pixels; zoomloc reads integer or floating-point bands", path)
        stretch = None if dtype == "uint8" else _percentile_stretch(ds, colour, path)
        stat = path.stat()
        return Source(
            path=path,
            crs=CRS.from_wkt(ds.crs.to_wkt()),
            transform=ds.transform,
            width=ds.width,
            height=ds.height,
            dtype=dtype,
            colour_bands=colour,
            alpha_band=alpha,
            overviews=tuple(ds.overviews(colour[0])),
            stretch=stretch,
            size=stat.st_size,
            mtime=stat.st_mtime,
        )


def _open(path: Path, **kwargs: Any) -> rasterio.DatasetReader:
    """``rasterio.open`` with GDAL's failures turned into one-line :class:`InputError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # reported by _check_georeferenced
            return rasterio.open(path, **kwargs)
    except RasterioError as exc:
        raise InputError(f"not a readable GeoTIFF ({gdal_reason(exc, path)})", path) from None


def gdal_reason(exc: BaseException, path: Path) -> str:
    """GDAL's own words for a failure: the innermost message of the chain, without the path.

    rasterio wraps GDAL errors ("Read failed. See previous exception for details."); the
    innermost one says what actually went wrong (e.g. "got 4488 bytes, expected 196608").
    """
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for name in (f"'{path}' ", f"{path}: ", f"{path}, ", str(path)):
        message = message.replace(name, "")
    return message.strip().rstrip(".")


def _check_georeferenced(ds: rasterio.DatasetReader, path: Path) -> None:
    if ds.crs is None or ds.transform == Affine.identity():
        gcps, _ = ds.gcps
        if gcps:
            raise GeoreferenceError(
                f"is georeferenced by {len(gcps)} ground control points only, without a geotransform; "
                "warp it first (gdalwarp -t_srs EPSG:<code> in.tif out.tif)",
                path,
            )
        if ds.rpcs:
            raise GeoreferenceError("is georeferenced by RPCs only; orthorectify it first (gdalwarp -rpc)", path)
        missing = "no CRS" if ds.crs is None else "no geotransform (identity pixel grid)"
        raise GeoreferenceError(f"is not georeferenced: it has {missing}", path)


def _interpret_bands(ds: rasterio.DatasetReader, path: Path) -> tuple[tuple[int, ...], int | None]:
    """(colour band indexes, alpha band index) from the bands' colour interpretation.

    Colour is the bands tagged red, green, blue if all three are; otherwise the non-alpha bands
    when there are one (grey) or three (RGB written without photometric tags) of them.
    """
    interp = ds.colorinterp
    alphas = [i + 1 for i, ci in enumerate(interp) if ci == ColorInterp.alpha]
    tagged = [interp.index(ci) + 1 for ci in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if ci in interp]
    others = tuple(i for i in ds.indexes if i not in alphas)
    if len(alphas) <= 1:
        if len(tagged) == 3:
            return tuple(tagged), (alphas[0] if alphas else None)
        if len(others) in (1, 3):
            return others, (alphas[0] if alphas else None)
    names = ", ".join(ci.name for ci in interp)
    raise InputError(
        f"has {ds.count} bands ({names}) that zoomloc cannot show as colour; "
        "it reads grey (1 band) or RGB (3 bands, or bands tagged red/green/blue), each optionally with an alpha band",
        path,
    )


def _percentile_stretch(ds: rasterio.DatasetReader, colour: tuple[int, ...], path: Path) -> tuple[float, float]:
    """The (low, high) values of :data:`STRETCH_PERCENTILES`, from a decimated read (uses overviews)."""
    scale = max(1.0, max(ds.width, ds.height) / _STRETCH_SAMPLE_PX)
    shape = (len(colour), max(1, round(ds.height / scale)), max(1, round(ds.width / scale)))
    try:
        sample = ds.read(colour, out_shape=shape, masked=True, resampling=Resampling.nearest)
    except RasterioError as exc:
        raise InputError(f"is corrupt or truncated ({gdal_reason(exc, path)})", path) from None
    valid = sample.compressed().astype(np.float64)
    valid = valid[np.isfinite(valid)]
    if valid.size == 0:
        raise InputError("holds no valid pixel (all nodata or masked)", path)
    lo, hi = (float(v) for v in np.percentile(valid, STRETCH_PERCENTILES))
    return lo, (hi if hi > lo else lo + 1.0)


@dataclass(frozen=True)
class Rendered:
    """An RGB image on a north-up grid, with the fraction of each pixel covered by imagery."""

    rgb: np.ndarray  # [H, W, 3] uint8, FILL_RGB where alpha == 0
    alpha: np.ndarray  # [H, W] float32 in 0..1


@dataclass
class Mosaic:
    """Several sources rendered as one image in ``crs``.

    Where several sources have imagery, a pixel takes its colour from the first of them (the
    CLI sorts them by file name); coverage accumulates over all (alpha "over" compositing).

    A context manager: it keeps each source's datasets (full resolution and overviews) open
    between renders. ``source_mpx`` counts the source pixels read so far (at the resolution
    actually read), the denominator of the pyramid's throughput figure.
    """

    sources: list[Source]
    crs: CRS
    source_mpx: float = 0.0
    _footprints: list[shapely.Polygon] = field(init=False, repr=False)
    _src_res: list[float] = field(init=False, repr=False)  # a source pixel's side in `crs` units
    _datasets: dict[tuple[int, int | None], rasterio.DatasetReader] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.crs = CRS.from_user_input(self.crs)
        self._footprints = [s.footprint(self.crs) for s in self.sources]
        self._src_res = [float(np.sqrt(f.area / (s.width * s.height))) for f, s in zip(self._footprints, self.sources)]

    def __enter__(self) -> Mosaic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()

    def render(self, west: float, north: float, res: float, width: int, height: int) -> Rendered:
        """The mosaic on the ``width×height`` grid of ``res``-unit pixels whose NW corner is (west, north)."""
        area = shapely.box(west, north - height * res, west + width * res, north)
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[:] = FILL_RGB
        alpha = np.zeros((height, width), np.float32)
        for i, source in enumerate(self.sources):
            overlap = self._footprints[i].intersection(area).area
            if overlap == 0 or alpha.min() >= 1.0:
                continue
            overview = _overview_for(source, res / self._src_res[i])
            values, source_alpha = self._warp(i, overview, from_origin(west, north, res, res), width, height)
            first = (source_alpha > 0) & (alpha == 0)  # where this source is the first with imagery
            np.copyto(rgb, source.to_rgb8(values), where=first[..., None])
            alpha += source_alpha * (1.0 - alpha)
            self.source_mpx += overlap / (self._src_res[i] * (overview or 1)) ** 2 / 1e6
        return Rendered(rgb, alpha)

    def _warp(self, i: int, overview: int | None, transform: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Warp source ``i`` (at ``overview``) → (colour bands float32, alpha 0..1)."""
        source = self.sources[i]
        ds = self._dataset(i, overview)
        out = np.zeros((len(source.colour_bands) + 1, height, width), np.float32)
        try:
            reproject(
                rasterio.band(ds, list(source.colour_bands)),
                out,
                dst_transform=transform,
                dst_crs=self.crs,
                resampling=Resampling.average,
                src_alpha=source.alpha_band or 0,  # a band number of `ds`, as GDAL wants
                dst_alpha=len(out),
            )
        except RasterioError as exc:
            raise InputError(f"is corrupt or truncated ({gdal_reason(exc, source.path)})", source.path) from None
        return out[:-1], out[-1] / 255.0

    def _dataset(self, i: int, overview: int | None) -> rasterio.DatasetReader:
        key = (i, overview)
        if key not in self._datasets:
            source = self.sources[i]
            level = {} if overview is None else {"overview_level": source.overviews.index(overview)}
            self._datasets[key] = _open(source.path, **level)
        return self._datasets[key]


def _overview_for(source: Source, shrink: float) -> int | None:
    """The coarsest overview factor not coarser than ``shrink`` (output px / source px), or None.

    Reading a 4× overview for a 5× shrink averages 1.25² overview pixels per output pixel
    instead of 25 full-resolution ones: the same result up to the overview's own resampling,
    for a 16th of the I/O. GDAL's warper does not make this choice itself.
    """
    fitting = [f for f in source.overviews if f <= shrink * (1 + 1e-6)]
    return max(fitting) if fitting else None
