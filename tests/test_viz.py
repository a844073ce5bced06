"""The interactive map: warped imagery lands on its coordinates, the HTML holds every layer and
tooltip with no network needed, and headless Chromium shows the imagery where Leaflet puts its
coordinates, with no JavaScript error.

The synthetic city lies at 11.8°E 60°N, 2.8° east of UTM zone 32's central meridian, where grid
north and map north differ by ~2.4°: an overlay merely stretched over the cells' lon/lat
bounds would put features near the region's edge ~40 m (many screen pixels) off.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin

from zoomloc.core.errors import InputError, ZoomlocError
from zoomloc.geo.grid import geodesic_m, utm_crs_for
from zoomloc.geo.pyramid import PyramidReader, PyramidSpec, build_pyramid
from zoomloc.inference.localization import Candidate, Localization, Step, Track, TrackPoint
from zoomloc.inference.viz import WEB_MERCATOR, default_imagery_level, localization_map, save_map, warp_to_web_mercator

LON, LAT = 11.8, 60.0
CRS = utm_crs_for(LON, LAT)
RES, SIZE = 5.0, 440  # 2.2 km of imagery for a 2 km region
FEATURES = [(-650.0, 650.0), (650.0, 650.0)]  # centres of magenta squares, metres east/north of the image centre
FEATURE_M = 150.0
MAGENTA = (255, 0, 255)
SPEC = PyramidSpec(k=4, levels=2, terminal_m=None, side_m=2000.0, px=32)  # cells 500 m, 125 m
CHROMIUM = shutil.which("chromium")
NASTY = "<b>IMG_2</b> `${x}` C:\\new.jpg"  # HTML, and what would break folium's JS template literal
NASTY_ESCAPED = "&lt;b&gt;IMG_2&lt;/b&gt; &#96;&#36;{x}&#96; C:&#92;new.jpg"


def _centre_xy() -> tuple[float, float]:
    x, y = Transformer.from_crs("EPSG:4326", CRS, always_xy=True).transform(LON, LAT)
    return float(x), float(y)


def _feature_lonlat() -> list[tuple[float, float]]:
    cx, cy = _centre_xy()
    to_wgs84 = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    return [to_wgs84.transform(cx + dx, cy + dy) for dx, dy in FEATURES]


def _pattern() -> np.ndarray:
    """Colourful noisy 4×4 blocks (no magenta in them) with the magenta FEATURES; [3, SIZE, SIZE]."""
    rng = np.random.default_rng(0)
    block = SIZE // 4
    colours = rng.integers(30, 200, (4, 4, 3)).astype(np.int16)
    colours[..., 1] = np.maximum(colours[..., 1], 120)  # green-ish: far from magenta
    img = np.kron(colours, np.ones((block, block, 1), np.int16)) + rng.integers(-25, 25, (SIZE, SIZE, 3))
    half = FEATURE_M / RES / 2
    for dx, dy in FEATURES:
        col, row = SIZE / 2 + dx / RES, SIZE / 2 - dy / RES
        img[int(row - half) : int(row + half), int(col - half) : int(col + half)] = MAGENTA
    return np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def pyramid_path(tmp_path_factory):
    sat = tmp_path_factory.mktemp("viz") / "city" / "satellite"
    sat.mkdir(parents=True)
    cx, cy = _centre_xy()
    transform = from_origin(cx - SIZE * RES / 2, cy + SIZE * RES / 2, RES, RES)
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=3, dtype="uint8", crs=CRS, transform=transform)
    with rasterio.open(sat / "blocks.tif", "w", **profile) as ds:
        ds.write(_pattern())
    return build_pyramid(sat.parent, SPEC, progress=False).path


def _localization(grid, image: str, dx: float, dy: float, truth: tuple[float, float] | None = None) -> Localization:
    """A made-up localization of the terminal cell ``(dx, dy)`` metres from the image centre."""
    cx, cy = _centre_xy()
    x, y = cx + dx, cy + dy
    actions = grid.path_of_xy(x, y)
    steps = tuple(Step(i + 1, int(grid.cell_of_path(actions[: i + 1])), p) for i, p in enumerate((0.83, 0.61)))
    paths = [grid.path_of_xy(x + ox * grid.terminal_m, y) for ox in (0, 1, -1)]
    candidates = tuple(
        Candidate(*map(float, grid.centre_lonlat_of_path(path)), p, tuple(int(a) for a in path)) for path, p in zip(paths, (0.5, 0.2, 0.1))
    )
    best = candidates[0]
    return Localization(image, best.lon, best.lat, grid.terminal_m, best.probability, steps, candidates, *(truth or (None, None)))


@pytest.fixture(scope="module")
def rendered(pyramid_path, tmp_path_factory):
    """The map of two localizations (one with its true position), saved; and the localizations."""
    with PyramidReader(pyramid_path) as pyr:
        truth = tuple(map(float, pyr.grid.to_lonlat(*np.add(_centre_xy(), (80.0, -60.0)))))
        locs = [_localization(pyr.grid, "IMG_1.jpg", 0.0, 0.0, truth), _localization(pyr.grid, NASTY, 500.0, -500.0)]
        path = tmp_path_factory.mktemp("map") / "map.html"
        save_map(localization_map(locs, pyr), path)
    return path, locs


# ------------------------------------------------------------------------------ georeferencing
def test_warp_puts_pixels_at_their_coordinates():
    cx, cy = _centre_xy()
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[10:14, 180:184] = 255  # a 40 m bright square ~920 m from the centre, near the NE corner
    bounds = (cx - 1000, cy - 1000, cx + 1000, cy + 1000)
    rgba, ((south, west), (north, east)) = warp_to_web_mercator(rgb, bounds, CRS)

    rows, cols = np.nonzero(rgba[..., 0] > 128)
    to_merc = Transformer.from_crs("EPSG:4326", WEB_MERCATOR, always_xy=True)
    (mx0, mx1), (my0, my1) = to_merc.transform([west, east], [south, north])
    mx = mx0 + (cols.mean() + 0.5) / rgba.shape[1] * (mx1 - mx0)  # Leaflet stretches linearly in Mercator
    my = my1 - (rows.mean() + 0.5) / rgba.shape[0] * (my1 - my0)
    got = Transformer.from_crs(WEB_MERCATOR, "EPSG:4326", always_xy=True).transform(mx, my)
    want = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(cx - 1000 + 182 * 10, cy + 1000 - 12 * 10)
    assert geodesic_m(*got, *want) < 5.0  # half a source pixel; the convergence alone would make ~38 m
    assert rgba[0, 0, 3] == 0 and rgba[-1, -1, 3] == 0  # the rotated square leaves transparent corners
    assert (rgba[90:110, 90:110, 3] == 255).all()


def test_default_imagery_level_is_the_deepest_mosaic_that_fits(pyramid_path):
    with PyramidReader(pyramid_path) as pyr:
        assert default_imagery_level(pyr.grid, pyr.px) == 1
        assert default_imagery_level(pyr.grid, 1024) == 0  # 4 × 1024 px would be too big


def test_imagery_level_without_views_is_an_input_error(pyramid_path):
    with PyramidReader(pyramid_path) as pyr, pytest.raises(InputError, match="imagery level 2"):
        localization_map([], pyr, imagery_level=2)


# ------------------------------------------------------------------------------ the HTML
def test_html_is_self_contained(rendered):
    text = rendered[0].read_text()
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert "data:text/javascript;base64," in text and "data:text/css;base64," in text
    assert text.count("L.imageOverlay(") == 3  # the region, and the terminal context crop of each photo
    assert text.count("data:image/webp;base64,") == 3
    assert len(text) < 2_000_000
    assert [p.name for p in rendered[0].parent.iterdir()] == ["map.html"]  # written atomically, nothing left over


def test_html_has_layers_and_tooltips(rendered):
    path, (loc1, loc2) = rendered
    text = path.read_text()
    overlays = re.search(r"overlays\s*:\s*\{(.*?)\}", text, re.S).group(1)
    assert re.findall(r'"([^"]+)"\s*:', overlays) == ["satellite", "zoom path", "candidates", "predicted", "truth"]
    for loc, name in ((loc1, "IMG_1.jpg"), (loc2, NASTY_ESCAPED)):
        for i, step in enumerate(loc.path, start=1):
            assert f"{name} — step {i}: cell {step.cell}, {100 * step.probability:.2g}%" in text  # 83%, 61%
        assert f"{name} — candidate 1: 50%" in text and f"{name} — candidate 3: 10%" in text
        assert f"{name} — predicted {loc.lat:.6f}, {loc.lon:.6f}" in text
    assert "<b>IMG_2" not in text
    assert re.search(rf'`<div>\s*{loc1.error_m:.0f} m\s*</div>`,\s*\{{\s*"permanent": true', text)
    assert text.count("L.circleMarker(") == 3  # two predictions, one truth
    assert text.count("L.polyline(") == 1
    legend = re.search(r'<div style="position:fixed;bottom.*?</div></div>', text, re.S).group(0)
    for label in ("zoom step 1", "zoom step 2", "candidate cells", "prediction", "true position", "error"):
        assert label in legend
    assert "bindPopup" not in text  # the made-up photos are no files: no thumbnail to show


def test_a_prediction_pops_up_its_photo(pyramid_path, tmp_path):
    photo = tmp_path / "street.jpg"
    Image.fromarray(np.full((200, 400, 3), (200, 30, 30), np.uint8)).save(photo)
    with PyramidReader(pyramid_path) as pyr:
        page = localization_map([_localization(pyr.grid, str(photo), 0.0, 0.0)], pyr).get_root().render()
    assert page.count("bindPopup") == 1 and "$(`" not in page  # Leaflet's own popup: the page inlines no jQuery
    thumbnail = re.search(r'src=\\?"data:image/jpeg;base64,([A-Za-z0-9+/=]+)', page).group(1)
    with Image.open(io.BytesIO(base64.b64decode(thumbnail))) as img:
        assert img.size == (200, 100) and np.asarray(img)[50, 100, 0] > 150  # the photo, shrunk to the popup


# ------------------------------------------------------------------------------ in a browser
# The map gets a fixed size: Chromium lays out --dump-dom and --screenshot runs with viewports of
# different heights (the former less the hidden browser UI), and both must see one map.
_INSTRUMENT = """<style>.folium-map { width: 1000px !important; height: 640px !important; }</style>
<script>
window.__errors = [];
addEventListener("error", e => __errors.push(e.message || "failed to load " + (e.target.src || e.target.href || e.target)), true);
addEventListener("unhandledrejection", e => __errors.push("unhandled rejection: " + e.reason));
const __consoleError = console.error;
console.error = (...args) => { __errors.push(args.join(" ")); __consoleError(...args); };
</script>"""

_REPORT = """<script>
addEventListener("load", () => setTimeout(() => {
  const report = {errors: __errors, leaflet: typeof L};
  try {
    const map = window[document.querySelector(".folium-map").id];
    report.images = [...document.querySelectorAll("img.leaflet-image-layer")].map(i => i.complete && i.naturalWidth > 0);
    report.features = FEATURES.map(f => map.latLngToContainerPoint(f));
  } catch (e) { report.errors.push(String(e)); }
  const pre = Object.assign(document.createElement("pre"), {id: "report", textContent: JSON.stringify(report)});
  pre.style.display = "none";
  document.body.appendChild(pre);
}, 300));
</script>"""


def _chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,800",
        "--force-device-scale-factor=1",
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)


def _browser_report(page_html: str, features: list[list[float]], tmp_path) -> tuple[dict, Path]:
    """What the instrumented page reports after headless Chromium loaded it (errors, Leaflet, images,
    ``features``' pixels), and the page."""
    text = page_html.replace("<head>", "<head>" + _INSTRUMENT, 1)
    page = tmp_path / "page.html"
    page.write_text(text.replace("</html>", f"<script>const FEATURES = {json.dumps(features)};</script>{_REPORT}</html>"))
    dom = _chromium(tmp_path, page.as_uri(), "--dump-dom")
    found = re.search(r'<pre id="report"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the page wrote no report; chromium said:\n{dom.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1))), page


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/install_chromium.sh installs it)")
def test_browser_shows_aligned_imagery_without_errors(rendered, tmp_path):
    report, page = _browser_report(rendered[0].read_text(), [[lat, lon] for lon, lat in _feature_lonlat()], tmp_path)
    assert report["errors"] == []
    assert report["leaflet"] == "object"
    assert report["images"] == [True, True, True]

    png = tmp_path / "page.png"
    _chromium(tmp_path, page.as_uri(), f"--screenshot={png}")
    shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert shot.shape == (800, 1000, 3)
    centre = shot[170:470, 350:650].reshape(-1, 3)
    assert centre.std(axis=0).mean() > 20 and len(np.unique(centre, axis=0)) > 1000, "no imagery on the page"
    for point in report["features"]:
        x, y = round(point["x"]), round(point["y"])
        window = shot[y - 60 : y + 60, x - 60 : x + 60]
        rows, cols = np.nonzero((window[..., 0] > 180) & (window[..., 1] < 100) & (window[..., 2] > 180))
        assert len(rows) > 100, f"no magenta square near {x}, {y}"
        offset = np.hypot(cols.mean() - 59.5, rows.mean() - 59.5)
        assert offset < 4, f"the magenta square is {offset:.1f} px from where Leaflet puts its coordinates"


# ------------------------------------------------------------------------------ a track
TRACK_DX = (-440.0, -310.0, -60.0, 60.0)  # metres east of the image centre, along one street (cells are 125 m)
TRACK_CANDIDATES = (0, 1, None, 0)  # the fused track takes photo 1's second candidate and judges photo 2 an outlier


def _track(grid, folder) -> Track:
    """Four photos of one capture (files, for their popups), each with its truth, and a fused track over them."""
    cx, cy = _centre_xy()
    photos = []
    for i, dx in enumerate(TRACK_DX):
        path = folder / f"frame_{i}.jpg"
        Image.fromarray(np.full((60, 120, 3), (40 * i, 90, 200), np.uint8)).save(path)
        truth = tuple(map(float, grid.to_lonlat(cx + dx + 20.0, cy - 30.0)))
        photos.append(_localization(grid, str(path), dx, 0.0, truth))
    points = []
    for i, (photo, candidate) in enumerate(zip(photos, TRACK_CANDIDATES)):
        if candidate is None:  # placed between its neighbours, as the fusion does
            lon, lat = (photos[i - 1].lon + photos[i + 1].lon) / 2, (photos[i - 1].lat + photos[i + 1].lat) / 2
        else:
            lon, lat = photo.candidates[candidate].lon, photo.candidates[candidate].lat
        points.append(TrackPoint(photo.image, lon, lat, (0.9, 0.6, 0.3, 0.8)[i], candidate, 2.5 * i))
    return Track("sequence-7", tuple(photos), tuple(points), fusion_s=0.001)


@pytest.fixture(scope="module")
def track_rendered(pyramid_path, tmp_path_factory):
    """The HTML of a map of one track (its photos given as the localizations, as ``zoomloc localize --track`` does), and the track."""
    with PyramidReader(pyramid_path) as pyr:
        track = _track(pyr.grid, tmp_path_factory.mktemp("track"))
        page = localization_map(track.photos, pyr, tracks=[track]).get_root().render()
    return page, track


def _calls(page: str, function: str) -> list:
    """The first argument (a JSON value) of every call of ``function`` in the page's script."""
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(page, m.end())[0] for m in re.finditer(rf"{re.escape(function)}\(\s*", page)]


def test_html_of_a_track_has_its_layer_polylines_and_legend(track_rendered):
    page, track = track_rendered
    overlays = re.search(r"overlays\s*:\s*\{(.*?)\}", page, re.S).group(1)
    assert re.findall(r'"([^"]+)"\s*:', overlays) == ["satellite", "zoom path", "candidates", "predicted", "truth", "fused track"]
    lines = _calls(page, "L.polyline")
    assert len(lines) == 3  # the fused path, the true path, and one multi-line of per-photo answer → fused point
    fused = [[p.lat, p.lon] for p in track.points]
    true = [[p.true_lat, p.true_lon] for p in track.photos]
    pulls = [[[p.lat, p.lon], [q.lat, q.lon]] for p, q in zip(track.photos, track.points) if (p.lat, p.lon) != (q.lat, q.lon)]
    assert len(pulls) == 2  # photo 1 (its second candidate) and photo 2 (the outlier); photos 0 and 3 kept their answers
    paths, (multi,) = [line for line in lines if np.ndim(line) == 2], [line for line in lines if np.ndim(line) == 3]
    assert len(paths) == 2 and any(np.allclose(line, fused, rtol=0, atol=1e-9) for line in paths)
    assert any(np.allclose(line, true, rtol=0, atol=1e-9) for line in paths)
    np.testing.assert_allclose(multi, pulls, rtol=0, atol=1e-9)
    assert "sequence-7 — fused track of 4 photos" in page and "sequence-7 — true path" in page
    assert page.count("L.circleMarker(") == 12  # per photo: its own answer, its truth, its fused point
    assert not re.search(r'"permanent": true', page)  # no labelled error line per photo of a track
    legend = re.search(r'<div style="position:fixed;bottom.*?</div></div>', page, re.S).group(0)
    for label in ("per-photo answer", "fused track (click a point: the photo)", "per-photo answer → fused point", "true path"):
        assert label in legend
    assert "prediction (click" not in legend  # the photos' own answers are told apart from the fused track


def test_every_photo_of_a_track_pops_up_from_its_fused_point(track_rendered):
    page, track = track_rendered
    popups = _calls(page, "bindPopup")
    assert len(popups) == len(track.points)  # the fused points'; the photos' own dots only have tooltips
    errors = track.errors_m()
    for i, (popup, photo, point) in enumerate(zip(popups, track.photos, track.points)):
        assert popup.startswith('<img src="data:image/jpeg;base64,') and html.escape(photo.image) in popup
        where = f"fused {point.lat:.6f}, {point.lon:.6f} ({100 * point.probability:.2g}% given the capture"
        assert f"photo {i + 1}/4 at {point.time_s:.1f} s: {where}" in popup
        assert f"error {errors[i]:.0f} m (the photo alone: {photo.error_m:.0f} m)" in popup
    assert "judged wrong" in popups[2] and "the photo&#x27;s candidate 2" in popups[1]


def test_a_track_map_adds_the_fused_cells_views_and_needs_no_separate_photos(pyramid_path, track_rendered):
    page, track = track_rendered
    with PyramidReader(pyramid_path) as pyr:
        grid = pyr.grid
        own = {int(p.path[-1].cell) for p in track.photos}
        fused = {
            int(grid.cell_of_path(p.candidates[q.candidate].path)) for p, q in zip(track.photos, track.points) if q.candidate is not None
        }
        assert fused - own  # photo 1's second candidate is a cell no photo answered
        assert page.count("L.imageOverlay(") == 1 + len(own | fused)  # the region, then each terminal cell's context crop
        alone = localization_map([], pyr, tracks=[track]).get_root().render()
    assert alone.count("L.circleMarker(") == 12 and alone.count("bindPopup") == 4 and alone.count("L.polyline(") == 3


def test_a_map_that_cannot_be_written_is_one_line(pyramid_path, tmp_path):
    blocker = tmp_path / "maps"
    blocker.write_text("a file")
    with PyramidReader(pyramid_path) as pyr, pytest.raises(ZoomlocError, match="cannot write the map") as error:
        save_map(localization_map([], pyr), blocker / "map.html")
    assert "\n" not in str(error.value) and sorted(p.name for p in tmp_path.iterdir()) == ["maps"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/install_chromium.sh installs it)")
def test_browser_shows_a_track_without_errors(track_rendered, tmp_path):
    page_html, track = track_rendered
    report, _ = _browser_report(page_html, [], tmp_path)
    assert report["errors"] == [] and report["leaflet"] == "object"
    assert report["images"] and all(report["images"])
