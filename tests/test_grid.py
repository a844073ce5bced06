"""The zoom grid: round trips over many random points, and its geometry against pyproj/shapely."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from pyproj import CRS, Transformer

from zoomloc.core.errors import InputError, OutsideRegionError
from zoomloc.geo.grid import ZoomGrid, geodesic_m, utm_crs_for

N_POINTS = 200_000


@pytest.fixture(scope="module")
def paper_grid() -> ZoomGrid:
    """The paper's setting: 4×4 grid, 4 levels, 10 km, over central Washington DC."""
    return ZoomGrid.covering((-77.06, 38.88, -77.0, 38.92), terminal_m=10_000 / 4**4, k=4, levels=4)


def _random_lonlat(grid: ZoomGrid, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = grid.bounds
    x = rng.uniform(minx, maxx, n)
    y = rng.uniform(miny, maxy, n)
    keep = grid.contains_xy(x, y)  # drop the open east/south edges, if a draw hits them
    return grid.to_lonlat(x[keep], y[keep])


def test_paper_grid_sizes(paper_grid):
    assert paper_grid.crs == CRS.from_epsg(32618)  # DC lies in UTM zone 18N
    assert paper_grid.side_m == pytest.approx(10_000)
    assert paper_grid.terminal_m == pytest.approx(39.0625)
    assert [paper_grid.n_cells(level) for level in range(5)] == [1, 16, 256, 4096, 65536]


@pytest.mark.parametrize(
    "lon, lat, epsg",
    [(13.4, 52.5, 32633), (-77.03, 38.9, 32618), (115.2, -8.65, 32750), (-104.8, 38.8, 32613), (4.97, 51.83, 32631)],
)
def test_utm_zone_of_centre(lon, lat, epsg):
    assert utm_crs_for(lon, lat) == CRS.from_epsg(epsg)


def test_terminal_centre_within_half_diagonal(paper_grid):
    """The property the metrics rely on: a perfect policy's error is at most half a cell diagonal."""
    lon, lat = _random_lonlat(paper_grid, N_POINTS)
    paths = paper_grid.path_of_lonlat(lon, lat)
    assert paths.shape == (len(lon), 4)
    clon, clat = paper_grid.centre_lonlat_of_path(paths)
    err = geodesic_m(lon, lat, clon, clat)
    # Ground distance differs from grid distance by UTM's scale factor (≤ 0.1 % here).
    assert err.max() <= paper_grid.terminal_m * math.sqrt(2) / 2 * 1.001
    # …and the points really spread over the cell: the bound is nearly reached.
    assert err.max() > paper_grid.terminal_m * math.sqrt(2) / 2 * 0.95


def test_point_lies_in_its_cell_at_every_level(paper_grid):
    lon, lat = _random_lonlat(paper_grid, 20_000, seed=1)
    x, y = paper_grid.to_xy(lon, lat)
    paths = paper_grid.path_of_xy(x, y)
    for level in range(paper_grid.levels + 1):
        b = paper_grid.bounds_of_path(paths[:, :level])
        assert np.all((b[:, 0] <= x) & (x < b[:, 2]) & (b[:, 1] < y) & (y <= b[:, 3]))
        np.testing.assert_allclose(b[:, 2] - b[:, 0], paper_grid.cell_size(level))


def test_actions_are_row_major_north_west_first(paper_grid):
    """Action a = row*k + col, row 0 north, col 0 west, at every level."""
    minx, miny, maxx, maxy = paper_grid.bounds
    eps = 1.0
    corners = {  # (x, y) → expected first action
        (minx + eps, maxy - eps): 0,  # north-west
        (maxx - eps, maxy - eps): 3,  # north-east
        (minx + eps, miny + eps): 12,  # south-west
        (maxx - eps, miny + eps): 15,  # south-east
    }
    xs, ys = zip(*corners)
    paths = paper_grid.path_of_xy(np.array(xs), np.array(ys))
    assert list(paths[:, 0]) == list(corners.values())
    # The corner cell's own corner: the same action all the way down.
    assert all(len(set(p)) == 1 for p in paths.tolist())


def test_path_cell_round_trip(paper_grid):
    for level in range(paper_grid.levels + 1):
        cells = np.arange(paper_grid.n_cells(level))
        paths = paper_grid.path_of_cell(level, cells)
        assert paths.shape == (len(cells), level)
        np.testing.assert_array_equal(paper_grid.cell_of_path(paths), cells)
    lon, lat = _random_lonlat(paper_grid, 5_000, seed=2)
    terminal = paper_grid.cell_of_lonlat(lon, lat)
    np.testing.assert_array_equal(terminal, paper_grid.cell_of_path(paper_grid.path_of_lonlat(lon, lat)))


def test_children_tile_their_parent(paper_grid):
    parent = np.array([5, 9])
    kids = paper_grid.children(parent)
    assert kids.shape == (16, 3)
    parent_box = shapely.box(*paper_grid.bounds_of_path(parent))
    kid_boxes = shapely.box(*paper_grid.bounds_of_path(kids).T)
    assert shapely.union_all(kid_boxes).symmetric_difference(parent_box).area < 1e-6
    assert sum(b.area for b in kid_boxes) == pytest.approx(parent_box.area)  # no overlaps


def test_polygons_contain_their_points(paper_grid):
    lon, lat = _random_lonlat(paper_grid, 2_000, seed=3)
    paths = paper_grid.path_of_lonlat(lon, lat)
    for level in (1, 4):
        polys = paper_grid.polygons_lonlat(paths[:, :level])
        assert shapely.contains_xy(polys, lon, lat).mean() > 0.999
    # A terminal polygon's area, measured geodesically, matches the cell (scale factor ≤ 0.1 %).
    from pyproj import Geod

    area, _ = Geod(ellps="WGS84").geometry_area_perimeter(paper_grid.polygons_lonlat(paths[:1])[0])
    assert abs(area) == pytest.approx(paper_grid.terminal_m**2, rel=2e-3)


def test_outside_points_rejected(paper_grid):
    lon, lat = _random_lonlat(paper_grid, 10, seed=4)
    lon = np.append(lon, -76.0)  # ~90 km east of the region
    lat = np.append(lat, 38.9)
    with pytest.raises(OutsideRegionError, match="1 point"):
        paper_grid.path_of_lonlat(lon, lat)
    with pytest.raises(InputError, match="invalid lon/lat"):
        paper_grid.path_of_lonlat([np.nan], [38.9])


def test_covering_footprint_in_other_crs():
    """A region from bounds in the Dutch RD New CRS lands in UTM 31N, centred on them."""
    rd = CRS.from_epsg(28992)
    bounds = (121_000.0, 426_000.0, 122_000.0, 427_000.0)
    grid = ZoomGrid.covering(bounds, rd, k=4, levels=2)
    assert grid.crs == CRS.from_epsg(32631)
    to_grid = Transformer.from_crs(rd, grid.crs, always_xy=True)
    gx0, gy0, gx1, gy1 = to_grid.transform_bounds(*bounds)
    minx, miny, maxx, maxy = grid.bounds
    assert minx <= gx0 and gx1 <= maxx + 1e-6 and miny <= gy0 and gy1 <= maxy + 1e-6
    assert (minx + maxx) / 2 == pytest.approx((gx0 + gx1) / 2)
    # An explicit terminal size fixes the side instead.
    assert ZoomGrid.covering(bounds, rd, k=4, levels=3, terminal_m=10).side_m == pytest.approx(640)


def test_attrs_round_trip_and_comparison(paper_grid):
    again = ZoomGrid.from_attrs(paper_grid.to_attrs())
    assert again.same_region(paper_grid)
    shifted = ZoomGrid.from_attrs({**paper_grid.to_attrs(), "origin_x": paper_grid.origin_x + 10})
    assert not shifted.same_region(paper_grid)


def test_invalid_grids_rejected():
    with pytest.raises(InputError, match="projected"):
        ZoomGrid("EPSG:4326", 0, 0, 100)
    with pytest.raises(InputError, match="k >= 2"):
        ZoomGrid("EPSG:32633", 0, 0, 100, k=1)


def test_geodesic_distance_matches_known_value():
    # One degree of latitude at the equator on WGS84 is 110 574.4 m; a flat formula on a sphere
    # of mean radius would give 111 195 m.
    assert geodesic_m(0, 0, 0, 1) == pytest.approx(110_574.4, abs=1)
    d = geodesic_m([0, 10], [0, 50], [0, 10], [0, 50])
    np.testing.assert_array_equal(d, [0, 0])
