"""Interactive maps of localizations: one self-contained HTML file (folium / Leaflet).

A person judging a localization wants to see the imagery the model zoomed into, the cell it
chose at each step and how sure it was, its alternatives, and how far it landed from the truth.
Everything is embedded in the HTML — the imagery as image overlays, Leaflet itself from the
``django-js-lib-leaflet`` package (plain static files, no Django needed) — so the map opens
offline, from a CI artefact or an e-mail, with no tile server and no CDN.

Imagery is warped, not stretched: pyramid views are north-up in the grid's UTM CRS while
Leaflet draws in Web Mercator, whose north is turned from UTM's by the meridian convergence
(up to ~2° for a city far from its zone's central meridian: tens of metres at the edge of a
10 km region). Each image is reprojected to EPSG:3857 and overlaid on its exact bounds there,
so a cell's rectangle coincides with the cell's pixels::

    with PyramidReader("city/pyramid.h5") as pyr:
        save_map(localization_map(localizations, pyr), "map.html")
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import resources

import folium
import numpy as np
from branca.element import MacroElement
from jinja2 import Template
from matplotlib import colormaps
from matplotlib.colors import to_hex
from PIL import Image
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import calculate_default_transform, reproject

from zoomloc.core.errors import InputError
from zoomloc.data.photos import load_photo
from zoomloc.geo.grid import WGS84, ZoomGrid
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.export import write_output
from zoomloc.inference.localization import Localization, Track, TrackPoint

WEB_MERCATOR = CRS.from_epsg(3857)
MAX_MOSAIC_PX = 2048
THUMBNAIL_PX = 200  # the photo in a prediction's popup
"""Largest side of the region-wide imagery: level 2 of a k=4, 128 px pyramid (a few MB of HTML)."""

LatLonBounds = tuple[tuple[float, float], tuple[float, float]]  # ((south, west), (north, east)), Leaflet's order
_TO_WGS84 = Transformer.from_crs(WEB_MERCATOR, WGS84, always_xy=True)
_PREDICTED, _TRUTH, _CANDIDATE, _ERROR_LINE = "#ff3b30", "#34c759", "#00d5ff", "#ffd60a"
_FUSED, _PULL = "#0a84ff", "#f2f2f7"  # the fused track; the thin line from a photo's own answer to its fused point


def localization_map(
    localizations: Sequence[Localization],
    pyramid: PyramidReader,
    *,
    imagery_level: int | None = None,
    max_candidates: int = 5,
    photos: Mapping[str, Image.Image] | None = None,
    tracks: Sequence[Track] = (),
) -> folium.Map:
    """A map of the region's imagery and of each localization's zoom, candidates and error.

    Layers (each switchable): "satellite" (the region at ``imagery_level``, default the deepest
    level whose mosaic fits :data:`MAX_MOSAIC_PX`, plus sharper views along every zoom path),
    "zoom path", "candidates" (the best ``max_candidates`` terminal cells), "predicted" and
    "truth", with a legend of their colours. Tooltips name the image, so many photos can share one
    map; a prediction's popup shows the photo: from ``photos`` (decoded already, by the name a
    localization gives) or else read from its file.

    ``tracks`` (captures localized as a whole) add the layer "fused track": each track's fused path,
    a dot per fused point whose popup shows the photo, its time, the fused probability and the
    errors, and a thin line from each photo's own answer to its fused point. A track's photos
    (``track.photos``, drawn whether or not ``localizations`` lists them) keep their own answers in
    "predicted", as smaller dots whose photo is the fused point's popup; their true positions in
    "truth" are joined as the true path, with no error line per photo. The imagery adds the sharper
    views along the cells the fused points pass through.
    """
    grid = pyramid.grid
    level = default_imagery_level(grid, pyramid.px) if imagery_level is None else imagery_level
    if not 0 <= level < grid.levels:
        raise InputError(f"imagery level {level} has no views; the pyramid has levels 0..{grid.levels - 1}")
    js, css = _leaflet_assets()
    m = folium.Map(tiles=None, control_scale=True, max_zoom=21, zoom_snap=0.25)
    # Instance attributes: folium's add_js_link would edit the class-wide CDN list in place.
    m.default_js, m.default_css = [("leaflet", js)], [("leaflet_css", css)]
    names = ("satellite", "zoom path", "candidates", "predicted", "truth") + (("fused track",) if tracks else ())
    layers = {name: folium.FeatureGroup(name=name).add_to(m) for name in names}
    in_track = {photo for track in tracks for photo in track.photos}
    listed = set(localizations)
    drawn = [*localizations, *(photo for track in tracks for photo in track.photos if photo not in listed)]
    _add_imagery(layers["satellite"], pyramid, level, drawn, _fused_cells(grid, tracks))
    thumbnails = {}  # a photo's thumbnail, decoded and encoded once however many dots show it
    for loc in drawn:
        _add_zoom_path(layers["zoom path"], grid, loc)
        _add_candidates(layers["candidates"], grid, loc, max_candidates)
        if loc in in_track:
            _add_prediction_and_truth(layers["predicted"], layers["truth"], loc, None, in_track=True)
        else:
            thumbnail = _cached_thumbnail(thumbnails, loc.image, photos)
            _add_prediction_and_truth(layers["predicted"], layers["truth"], loc, thumbnail)
    for track in tracks:
        _add_track(layers["fused track"], layers["truth"], track, [_cached_thumbnail(thumbnails, p.image, photos) for p in track.photos])
    folium.LayerControl(collapsed=False).add_to(m)
    _add_legend(m, grid.levels, tracks=bool(tracks))
    west, south, east, north = grid.region_polygon_lonlat().bounds
    m.fit_bounds([[south, west], [north, east]])
    return m


def save_map(m: folium.Map, path: str | os.PathLike) -> None:
    """Write the map's HTML to ``path`` atomically (a reader never sees half a page); a path that cannot
    be written is one line (:class:`~zoomloc.core.errors.ZoomlocError`)."""
    write_output(path, m.get_root().render(), "map")


def default_imagery_level(grid: ZoomGrid, px: int) -> int:
    """The deepest level with views whose region-wide mosaic is at most :data:`MAX_MOSAIC_PX` a side."""
    fitting = [lv for lv in range(grid.levels) if grid.cells_per_side(lv) * px <= MAX_MOSAIC_PX]
    return max(fitting, default=0)


def warp_to_web_mercator(rgb: np.ndarray, bounds: Sequence[float], crs: CRS) -> tuple[np.ndarray, LatLonBounds]:
    """Reproject a north-up ``[h, w, 3]`` image of ``bounds`` (minx, miny, maxx, maxy in ``crs``).

    Returns ``[h', w', 4]`` RGBA in EPSG:3857 (alpha 0 outside the source) and its bounds as
    Leaflet wants them; an ``L.imageOverlay`` of the two is georeferenced exactly, since
    Leaflet stretches an overlay linearly in Web Mercator.
    """
    height, width = rgb.shape[:2]
    rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], axis=2).transpose(2, 0, 1)
    transform, out_w, out_h = calculate_default_transform(crs, WEB_MERCATOR, width, height, *bounds)
    out = np.zeros((4, out_h, out_w), np.uint8)
    reproject(
        rgba,
        out,
        src_transform=from_bounds(*bounds, width, height),
        src_crs=crs,
        dst_transform=transform,
        dst_crs=WEB_MERCATOR,
        resampling=Resampling.bilinear,
    )
    west, north = transform.c, transform.f
    east, south = west + transform.a * out_w, north + transform.e * out_h
    (lon_w, lon_e), (lat_s, lat_n) = _TO_WGS84.transform([west, east], [south, north])
    return out.transpose(1, 2, 0), ((lat_s, lon_w), (lat_n, lon_e))


def _add_imagery(
    group: folium.FeatureGroup,
    pyramid: PyramidReader,
    level: int,
    localizations: Sequence[Localization],
    extra_cells: Iterable[tuple[int, int]] = (),
) -> None:
    """The region's mosaic at ``level``, then the sharper views along the zoom paths, finest on top.

    The path views are those of the cells the model chose at deeper levels (the terminal one
    with its context crop), and the ``extra_cells`` (level, cell): zooming into the map shows
    detail where the model looked.
    """
    grid, px = pyramid.grid, pyramid.px
    n = grid.cells_per_side(level)
    views = pyramid.views(level, np.arange(n * n)).reshape(n, n, px, px, 3)
    mosaic = views.transpose(0, 2, 1, 3, 4).reshape(n * px, n * px, 3)  # rows of cells → rows of pixels
    _add_overlay(group, mosaic, grid.bounds, grid.crs)
    cells = {(step.level, step.cell) for loc in localizations for step in loc.path} | set(extra_cells)
    cells = {(lv, cell) for lv, cell in cells if lv > level}
    details = [_cell_image(pyramid, lv, cell) for lv, cell in sorted(cells)]
    sharper = [(rgb, b) for rgb, b in details if b[2] - b[0] < grid.cell_size(level)]  # same px over less ground
    for rgb, bounds in sorted(sharper, key=lambda d: d[1][2] - d[1][0], reverse=True):
        _add_overlay(group, rgb, bounds, grid.crs)


def _cell_image(pyramid: PyramidReader, level: int, cell: int) -> tuple[np.ndarray, tuple[float, ...]]:
    """The pyramid's image of one cell and its bounds: a view, or a terminal cell's context crop."""
    grid = pyramid.grid
    minx, miny, maxx, maxy = grid.bounds_of_path(grid.path_of_cell(level, cell))
    if level < grid.levels:
        return pyramid.views(level, [cell])[0], (minx, miny, maxx, maxy)
    pad = (pyramid.context_factor - 1) * grid.terminal_m / 2
    return pyramid.context([cell])[0], (minx - pad, miny - pad, maxx + pad, maxy + pad)


def _add_overlay(group: folium.FeatureGroup, rgb: np.ndarray, bounds: Sequence[float], crs: CRS) -> None:
    rgba, (south_west, north_east) = warp_to_web_mercator(rgb, bounds, crs)
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "WEBP", quality=80)  # lossy with alpha: a tenth of a PNG
    url = _data_url(buffer.getvalue(), "image/webp")
    folium.raster_layers.ImageOverlay(url, [list(south_west), list(north_east)], pixelated=False, interactive=False).add_to(group)


def _level_colours(levels: int) -> list[str]:
    """One colour per zoom level, dark (the region's children) to bright (the terminal cells)."""
    return [to_hex(c) for c in colormaps["plasma"](np.linspace(0.15, 0.9, levels))]


def _percent(probability: float) -> str:
    """A probability as a percentage to 2 significant digits: 42%, 2.1%, 0.0021%."""
    return f"{100 * probability:.2g}%"


def _add_zoom_path(group: folium.FeatureGroup, grid: ZoomGrid, loc: Localization) -> None:
    """One outline per zoom step, coloured by level; transparent fill so hovering anywhere inside names it."""
    colours = _level_colours(grid.levels)
    for i, step in enumerate(loc.path, start=1):
        polygon = grid.polygons_lonlat(grid.path_of_cell(step.level, [step.cell]))[0]
        tooltip = _tooltip(f"{loc.image} — step {i}: cell {step.cell}, {_percent(step.probability)}")
        outline = folium.Polygon(_latlon(polygon), color=colours[step.level - 1], weight=2, fill=True, fill_opacity=0, tooltip=tooltip)
        outline.add_to(group)


def _add_candidates(group: folium.FeatureGroup, grid: ZoomGrid, loc: Localization, max_candidates: int) -> None:
    """The best terminal cells, filled in proportion to their probability relative to the best one."""
    candidates = loc.candidates[:max_candidates]
    if not candidates:
        return
    top = max(c.probability for c in candidates) or 1.0
    polygons = grid.polygons_lonlat(np.array([c.path for c in candidates]))
    for rank, (candidate, polygon) in enumerate(zip(candidates, polygons), start=1):
        folium.Polygon(
            _latlon(polygon),
            color=_CANDIDATE,
            weight=1,
            fill=True,
            fill_color=_CANDIDATE,
            fill_opacity=0.1 + 0.6 * candidate.probability / top,
            tooltip=_tooltip(f"{loc.image} — candidate {rank}: {_percent(candidate.probability)}"),
        ).add_to(group)


def _add_prediction_and_truth(
    predicted: folium.FeatureGroup, truth: folium.FeatureGroup, loc: Localization, thumbnail: str | None, *, in_track: bool = False
) -> None:
    """The predicted point, its warnings in its tooltip; the true one, when known and on the map, with a
    line labelled by the geodesic error (a line to a point hundreds of kilometres off the map would only
    pull the eye off it).

    A photo of a track (``in_track``) is a smaller dot with its error in its tooltip, and its truth a
    smaller dot with no line: its photo pops up from its fused point, and a track's true path and
    fused path (:func:`_add_track`) show its errors better than dozens of labelled lines would."""
    about = f"{_percent(loc.probability)}, cell {loc.cell_size_m:.0f} m"
    error_m = loc.error_m
    if in_track and error_m is not None:
        about += f", error {error_m:.0f} m"
    text = f"{loc.image} — predicted {loc.lat:.6f}, {loc.lon:.6f} ({about})" + "".join(f". Warning: {w}" for w in loc.warnings)
    point = _point(loc.lat, loc.lon, _PREDICTED, text, radius=4 if in_track else 7)
    if thumbnail is not None:  # click the prediction to see the photo
        _PhotoPopup(thumbnail, text).add_to(point)
    point.add_to(predicted)
    if error_m is None or loc.inside_map is False:
        return
    if in_track:
        text = f"{loc.image} — true position {loc.true_lat:.6f}, {loc.true_lon:.6f}"
        _point(loc.true_lat, loc.true_lon, _TRUTH, text, radius=4).add_to(truth)
        return
    line = [[loc.lat, loc.lon], [loc.true_lat, loc.true_lon]]
    label = _tooltip(f"{error_m:.0f} m", permanent=True)
    folium.PolyLine(line, color=_ERROR_LINE, weight=3, dash_array="6 4", tooltip=label).add_to(truth)
    text = f"{loc.image} — true position {loc.true_lat:.6f}, {loc.true_lon:.6f}, error {error_m:.0f} m"
    _point(loc.true_lat, loc.true_lon, _TRUTH, text).add_to(truth)


def _add_track(fused: folium.FeatureGroup, truth: folium.FeatureGroup, track: Track, thumbnails: Sequence[str | None]) -> None:
    """A track's fused path and points (each point's popup: the photo), the thin lines from each photo's
    own answer to its fused point (all in one polyline), and the true path when every photo's truth is
    known and on the map."""
    errors = track.errors_m()
    n = len(track.points)
    if n >= 2:
        label = _tooltip(f"{track.capture} — fused track of {n} photos")
        folium.PolyLine([[p.lat, p.lon] for p in track.points], color=_FUSED, weight=4, opacity=0.9, tooltip=label).add_to(fused)
    pulls = [
        [[photo.lat, photo.lon], [p.lat, p.lon]] for photo, p in zip(track.photos, track.points) if (photo.lat, photo.lon) != (p.lat, p.lon)
    ]
    if pulls:
        folium.PolyLine(pulls, color=_PULL, weight=1, opacity=0.8, dash_array="2 3").add_to(fused)
    for i, (photo, point, thumbnail) in enumerate(zip(track.photos, track.points, thumbnails)):
        text = _fused_text(track, i, photo, point, None if errors is None else float(errors[i]))
        marker = _point(point.lat, point.lon, _FUSED, text)
        if thumbnail is not None:
            _PhotoPopup(thumbnail, text).add_to(marker)
        marker.add_to(fused)
    if n >= 2 and all(p.true_lat is not None and p.true_lon is not None and p.inside_map is not False for p in track.photos):
        path = [[p.true_lat, p.true_lon] for p in track.photos]
        folium.PolyLine(path, color=_TRUTH, weight=2, opacity=0.9, tooltip=_tooltip(f"{track.capture} — true path")).add_to(truth)


def _fused_text(track: Track, i: int, photo: Localization, point: TrackPoint, error_m: float | None) -> str:
    """What a fused point says: which photo, when, where the capture puts it and how sure, and both errors."""
    where = f"{point.lat:.6f}, {point.lon:.6f}"
    sure = f"{_percent(point.probability)} given the capture"
    if point.candidate is None:
        sure += "; every candidate of the photo judged wrong, placed between its neighbours"
    elif point.candidate > 0:
        sure += f"; the photo's candidate {point.candidate + 1}"
    text = f"{photo.image} — {track.capture}, photo {i + 1}/{len(track.points)} at {point.time_s:.1f} s: fused {where} ({sure})"
    own = photo.error_m
    if error_m is not None and own is not None:
        text += f", error {error_m:.0f} m (the photo alone: {own:.0f} m)"
    return text


def _fused_cells(grid: ZoomGrid, tracks: Sequence[Track]) -> set[tuple[int, int]]:
    """(level, cell) of every cell on the paths of the candidates the tracks pass through (outliers have none)."""
    cells = set()
    for track in tracks:
        for photo, point in zip(track.photos, track.points):
            if point.candidate is None or not 0 <= point.candidate < len(photo.candidates):
                continue
            path = np.asarray(photo.candidates[point.candidate].path)
            cells |= {(lv, int(grid.cell_of_path(path[:lv]))) for lv in range(1, len(path) + 1)}
    return cells


def _cached_thumbnail(thumbnails: dict[str, str | None], image: str, photos: Mapping[str, Image.Image] | None) -> str | None:
    """The thumbnail of the photo named ``image`` (from ``photos``, else its file), made once per name."""
    if image not in thumbnails:
        photo = (photos or {}).get(image)
        thumbnails[image] = _thumbnail(image if photo is None else photo)
    return thumbnails[image]


class _PhotoPopup(MacroElement):
    """A popup bound to its parent layer: the photo's thumbnail (a data URL) above ``text``, escaped.
    folium's own ``Popup`` builds its content with jQuery, which a page that inlines Leaflet alone
    does not have."""

    _template = Template(
        """{% macro script(this, kwargs) %}
        {{ this._parent.get_name() }}.bindPopup({{ this.content|tojson }}, {"maxWidth": {{ this.width }}});
        {% endmacro %}"""
    )

    def __init__(self, thumbnail: str, text: str):
        super().__init__()
        self.content = f'<img src="{thumbnail}" width="{THUMBNAIL_PX}"><br>{html.escape(text)}'
        self.width = THUMBNAIL_PX + 20


def _thumbnail(image: str | Image.Image) -> str | None:
    """The photo (or the one at ``image``, upright as the model saw it: :func:`~zoomloc.data.photos.load_photo`)
    as a small JPEG data URL; None when it is no readable file (an in-memory image has no path)."""
    try:
        img = (image if isinstance(image, Image.Image) else load_photo(image)).copy()
    except InputError:
        return None
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=80)
    return _data_url(buffer.getvalue(), "image/jpeg")


def _add_legend(m: folium.Map, levels: int, *, tracks: bool = False) -> None:
    """What the colours mean, in the map's bottom-right corner, above the attribution (the scale holds
    the bottom-left one, the layer switch the top-right one; Leaflet draws no legend of its own). With
    ``tracks``, a photo's own answer is told apart from the fused track."""
    swatch = '<div><span style="display:inline-block;width:12px;height:12px;margin-right:6px;background:{};border:{}"></span>{}</div>'
    rows = [
        swatch.format("transparent", f"2px solid {colour}", f"zoom step {level}") for level, colour in enumerate(_level_colours(levels), 1)
    ]
    rows += [
        swatch.format(_CANDIDATE, f"1px solid {_CANDIDATE}", "candidate cells (fill: probability)"),
        swatch.format(_PREDICTED, "2px solid white", "per-photo answer" if tracks else "prediction (click: the photo)"),
    ]
    if tracks:
        rows += [
            swatch.format(_FUSED, "2px solid white", "fused track (click a point: the photo)"),
            swatch.format("transparent", f"1px dashed {_PULL}", "per-photo answer → fused point"),
        ]
    rows += [
        swatch.format(_TRUTH, "2px solid white", "true position" + (", true path" if tracks else "")),
        swatch.format(_ERROR_LINE, f"1px solid {_ERROR_LINE}", "error"),
    ]
    box = (
        '<div style="position:fixed;bottom:24px;right:12px;z-index:1000;background:rgba(255,255,255,0.9);'
        f'padding:6px 8px;border-radius:4px;font:12px sans-serif;line-height:18px">{"".join(rows)}</div>'
    )
    m.get_root().html.add_child(folium.Element(box))


def _point(lat: float, lon: float, colour: str, text: str, *, radius: float = 7) -> folium.CircleMarker:
    """A white-ringed dot: a circle marker needs no icon image, so nothing to fetch or inline."""
    return folium.CircleMarker(
        [lat, lon], radius=radius, color="white", weight=2, fill=True, fill_color=colour, fill_opacity=1, tooltip=_tooltip(text)
    )


def _tooltip(text: str, *, permanent: bool = False) -> folium.Tooltip:
    """A tooltip showing ``text`` as is: Leaflet reads it as HTML, inside a JS template literal."""
    safe = html.escape(text).translate({ord("`"): "&#96;", ord("$"): "&#36;", ord("\\"): "&#92;"})
    return folium.Tooltip(safe, sticky=not permanent, permanent=permanent)


def _latlon(polygon) -> list[list[float]]:
    """A shapely lon/lat polygon's ring in Leaflet's [lat, lon] order."""
    return [[lat, lon] for lon, lat in polygon.exterior.coords]


@cache
def _leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS as data URLs (the CSS's control icons inlined too).

    They come from the ``django-js-lib-leaflet`` wheel, which is only Leaflet's dist folder.
    """
    root = resources.files("js_lib_leaflet") / "static" / "js_lib_leaflet"
    css = re.sub(
        r"url\((images/[\w.-]+\.png)\)",
        lambda match: f"url({_data_url((root / match.group(1)).read_bytes(), 'image/png')})",
        (root / "leaflet.css").read_text(encoding="utf-8"),
    )
    return _data_url((root / "leaflet.js").read_bytes(), "text/javascript"), _data_url(css.encode(), "text/css")


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
