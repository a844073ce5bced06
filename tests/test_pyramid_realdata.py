"""The pyramid of real orthophotos, checked against independent rasterio reads of each cell.

Every view must equal what a plain ``rasterio.warp.reproject`` of the source onto that cell's
bounds in the grid CRS gives: this checks the grid geometry (cell bounds, north-up, CRS), the
block/phase rendering, colour handling and masks of six real files in five CRSs.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from pyproj import CRS, Transformer
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import reproject

from zoomloc.geo.pyramid import PyramidReader, PyramidSpec, build_pyramid

pytestmark = pytest.mark.realdata

PX = 32
MAX_MEAN_ABS_DIFF = 0.5  # grey levels (0..255): the same warp, so only rounding to uint8 differs (~0.25)
SHIFTED_MIN_DIFF = 3.0  # a read one output pixel off must differ clearly, or the check above proves nothing

# file → EPSG code of the UTM zone the grid must use
FILES = {
    "gorinchem_nl_0.25m_epsg28992.tif": 32631,
    "manila_ph_0.10m_epsg3395.tif": 32651,
    "colorado_springs_us_0.15m_epsg26913.tif": 32613,
    "duluth_us_0.50m_epsg32615_rgba.tif": 32615,
    "bali_id_0.35m_epsg32750_alpha_nodata.tif": 32750,
    "atlanta_us_0.5m_epsg32616_pan_uint16.tif": 32616,
}


def _city(tmp_path, realdata, name):
    sat = tmp_path / "city" / "satellite"
    sat.mkdir(parents=True)
    (sat / name).symlink_to(realdata / "orthophotos" / name)
    return sat.parent


def _reference(src, bounds, crs, bands, shift_px=0.0):
    """An independent read: warp ``bands`` of ``src`` onto ``bounds`` (grid CRS) at PX×PX, as float."""
    minx, miny, maxx, maxy = bounds
    dx = shift_px * (maxx - minx) / PX
    out = np.zeros((len(bands), PX, PX), np.float32)
    reproject(
        rasterio.band(src, bands),
        out,
        dst_transform=from_bounds(minx + dx, miny, maxx + dx, maxy, PX, PX),
        dst_crs=crs,
        resampling=Resampling.average,
    )
    return out


def _to_rgb(src, values):
    """The documented colour conversion, redone here: 8-bit as is; else a 2–98 % stretch; grey → RGB."""
    if src.dtypes[0] != "uint8":
        lo, hi = np.percentile(src.read(1, masked=True).compressed(), (2, 98))
        values = np.clip((values - lo) * 255.0 / (hi - lo), 0, 255)
    return np.broadcast_to(values, (3, PX, PX)).transpose(1, 2, 0)


@pytest.mark.parametrize("name", sorted(FILES))
def test_views_match_independent_reads(tmp_path, realdata, name):
    city = _city(tmp_path, realdata, name)
    with rasterio.open(city / "satellite" / name) as src:
        # A region well inside the image, so that every cell and context crop has imagery.
        side = 0.6 * min(src.width * src.res[0], src.height * src.res[1])
        summary = build_pyramid(city, PyramidSpec(k=4, levels=2, terminal_m=None, side_m=side, px=PX), progress=False)
        bands = [1] if src.count == 1 else [1, 2, 3]
        with PyramidReader(summary.path) as pyr:
            grid = pyr.grid
            assert grid.crs == CRS.from_epsg(FILES[name])
            # The region is centred on the image.
            cx, cy = Transformer.from_crs(src.crs, grid.crs, always_xy=True).transform(*src.xy(src.height / 2, src.width / 2))
            assert grid.origin_x + side / 2 == pytest.approx(cx, abs=0.5)
            assert grid.origin_y - side / 2 == pytest.approx(cy, abs=0.5)
            assert summary.coverage == pytest.approx(1.0)

            checks = []  # (stored view, bounds it must show)
            for level in range(grid.levels):
                n = grid.cells_per_side(level)
                views = pyr.views(level, np.arange(n * n))
                for cell in range(n * n):
                    checks.append((views[cell], grid.bounds_of_rowcol(cell // n, cell % n, level)))
                assert np.all(pyr.coverage(level) == pytest.approx(1.0))
            n = grid.cells_per_side(grid.levels)
            half = pyr.context_factor * grid.terminal_m / 2
            cells = np.arange(0, n * n, 7)
            for cell, view in zip(cells, pyr.context(cells)):
                x, y = grid.centre_xy_of_path(grid.path_of_cell(grid.levels, cell))
                checks.append((view, (x - half, y - half, x + half, y + half)))

        diffs = [np.abs(view - _to_rgb(src, _reference(src, bounds, grid.crs, bands))).mean() for view, bounds in checks]
        assert max(diffs) <= MAX_MEAN_ABS_DIFF, f"worst view differs by {max(diffs):.2f} grey levels"
        view, bounds = checks[-1]
        shifted = np.abs(view - _to_rgb(src, _reference(src, bounds, grid.crs, bands, shift_px=1.0))).mean()
        assert shifted >= SHIFTED_MIN_DIFF, f"a one-pixel shift changes the view by only {shifted:.2f}"


def test_transparent_border_is_uncovered(tmp_path, realdata):
    """bali: the alpha band's transparent border shows as fill and as coverage < 1."""
    name = "bali_id_0.35m_epsg32750_alpha_nodata.tif"
    city = _city(tmp_path, realdata, name)
    with rasterio.open(city / "satellite" / name) as src:
        side = 1.1 * max(src.width * src.res[0], src.height * src.res[1])  # the whole image and beyond
        summary = build_pyramid(city, PyramidSpec(k=4, levels=2, terminal_m=None, side_m=side, px=PX), progress=False)
        with PyramidReader(summary.path) as pyr:
            grid, coverage, views = pyr.grid, pyr.coverage(1), pyr.views(1, np.arange(16))
            terminal = pyr.coverage(2)
        alpha = np.stack([_reference(src, grid.bounds_of_rowcol(c // 4, c % 4, 1), grid.crs, [4])[0] / 255 for c in range(16)])

    assert 0.5 < summary.coverage < 0.9
    # Coverage per cell is the fraction of the cell with opaque imagery.
    np.testing.assert_allclose(coverage, alpha.mean(axis=(1, 2)), atol=0.05)
    assert coverage.min() < 0.5 and (coverage > 0.99).sum() >= 4  # border cells vs cells inside
    assert np.all(views[alpha == 0] == 0), "areas without imagery are filled with black"
    assert terminal.min() == 0 and terminal.max() == pytest.approx(1.0)


def test_uint16_grey_becomes_visible_rgb(tmp_path, realdata):
    name = "atlanta_us_0.5m_epsg32616_pan_uint16.tif"
    city = _city(tmp_path, realdata, name)
    summary = build_pyramid(city, PyramidSpec(k=4, levels=2, terminal_m=5.0, px=64), progress=False)
    with PyramidReader(summary.path) as pyr:
        view = pyr.views(0, [0])[0].astype(int)
    assert np.array_equal(view[..., 0], view[..., 1]) and np.array_equal(view[..., 0], view[..., 2])
    assert view.std() > 20, "the stretch spreads the values"
    assert np.percentile(view, 1) < 40 and np.percentile(view, 99) > 215
