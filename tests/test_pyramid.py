"""The tile pyramid on small synthetic GeoTIFFs: geometry, masks, mosaics, the file and its reader.

The synthetic image lies in UTM 33N on the central meridian (x = 500 000), so the grid CRS is
the source CRS and expected pixels can be computed exactly from the grid's cell bounds.
"""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.enums import Resampling
from rasterio.transform import from_bounds, from_origin
from rasterio.warp import transform_bounds

from zoomloc.cli.main import main
from zoomloc.core.errors import PyramidError
from zoomloc.geo import raster
from zoomloc.geo.grid import ZoomGrid
from zoomloc.geo.pyramid import FORMAT_VERSION, PyramidReader, PyramidSpec, build_pyramid

UTM33 = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_400.0  # NW corner of the synthetic images; 1 m pixels, 400 × 400
SQUARE = (X0 + 230, Y0 - 170, X0 + 250, Y0 - 150)  # a bright 20 m square: minx, miny, maxx, maxy
GREY, BRIGHT = 100, 255
SPEC = PyramidSpec(k=2, levels=3, terminal_m=None, side_m=320.0, px=32)  # cells 320, 160, 80, 40 m


def write_tif(path, data, crs=UTM33, transform=from_origin(X0, Y0, 1.0, 1.0), **profile):
    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    count, height, width = data.shape
    kwargs = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype, tiled=True, blockxsize=128, blockysize=128)
    kwargs.update(crs=crs, transform=transform, **profile)
    with rasterio.open(path, "w", **{k: v for k, v in kwargs.items() if v is not None}) as ds:
        ds.write(data)
    return path


def pattern() -> np.ndarray:
    """3 × 400 × 400 grey image with the bright SQUARE."""
    img = np.full((3, 400, 400), GREY, np.uint8)
    img[:, 150:170, 230:250] = BRIGHT
    return img


def new_city(tmp_path, name="city"):
    sat = tmp_path / name / "satellite"
    sat.mkdir(parents=True)
    return sat


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One pyramid of the pattern image, shared by the read-only tests."""
    sat = new_city(tmp_path_factory.mktemp("built"))
    write_tif(sat / "pattern.tif", pattern())
    return build_pyramid(sat.parent, SPEC, progress=False)


# ------------------------------------------------------------------------------ geometry
def _pixel_classes(bounds, px):
    """Masks of the pixels of a view of ``bounds`` lying fully inside / fully outside SQUARE."""
    minx, miny, maxx, maxy = bounds
    res = (maxx - minx) / px
    left = minx + np.arange(px) * res
    top = maxy - np.arange(px) * res
    sx0, sy0, sx1, sy1 = SQUARE
    in_x, in_y = (left >= sx0) & (left + res <= sx1), (top <= sy1) & (top - res >= sy0)
    out_x, out_y = (left + res <= sx0) | (left >= sx1), (top - res >= sy1) | (top <= sy0)
    return np.outer(in_y, in_x), np.outer(out_y, np.ones(px, bool)) | np.outer(np.ones(px, bool), out_x)


def test_bright_square_lands_on_its_pixels(built):
    cx, cy = (SQUARE[0] + SQUARE[2]) / 2, (SQUARE[1] + SQUARE[3]) / 2
    with PyramidReader(built.path) as pyr:
        grid, px = pyr.grid, pyr.px
        assert grid.crs.to_epsg() == 32633
        shown = []
        for level in range(grid.levels):
            (row,), (col,) = grid.rowcol_of_xy([cx], [cy], level)
            shown.append((pyr.views(level, [row * grid.cells_per_side(level) + col])[0], grid.bounds_of_rowcol(row, col, level)))
        cell = grid.cell_of_path(grid.path_of_xy([cx], [cy]))
        half = SPEC.context_factor * grid.terminal_m / 2
        tx, ty = grid.centre_xy_of_path(grid.path_of_cell(grid.levels, cell))
        shown.append((pyr.context(cell)[0], (tx[0] - half, ty[0] - half, tx[0] + half, ty[0] + half)))
    for view, bounds in shown:
        inside, outside = _pixel_classes(bounds, px)
        assert inside.any() and outside.any()
        assert np.all(view[inside] == BRIGHT) and np.all(view[outside] == GREY)


# ------------------------------------------------------------------------------ file layout
def test_layout_and_attributes(built):
    grid = built.grid
    with h5py.File(built.path, "r") as h5:
        for level in range(grid.levels):
            ds = h5[f"views/level_{level}"]
            assert ds.shape == (4**level, 32, 32, 3) and ds.dtype == np.uint8 and ds.chunks == (1, 32, 32, 3)
            assert h5[f"coverage/level_{level}"].shape == (4**level,) and h5[f"coverage/level_{level}"].dtype == np.float32
        assert h5["context/terminal"].shape == (64, 32, 32, 3) and h5["context/terminal"].chunks == (1, 32, 32, 3)
        assert h5["coverage/terminal"].shape == (64,)
        attrs = h5.attrs
        assert attrs["format_version"] == FORMAT_VERSION == 1
        assert ZoomGrid.from_attrs(attrs) == grid
        assert (attrs["px"], attrs["context_factor"]) == (32, 3.0)
        (source,) = json.loads(attrs["sources"])
        tif = built.path.parent / "satellite" / "pattern.tif"
        assert source["file"] == "pattern.tif" and source["size"] == tif.stat().st_size
        assert source["mtime"] == pytest.approx(tif.stat().st_mtime)
    assert built.n_views == 1 + 4 + 16 + 64 and built.coverage == pytest.approx(1.0)
    text = built.describe()
    assert str(built.path) in text and "UTM zone 33N" in text and "85 of 32x32" in text and 2 <= text.count("\n") <= 6


# ------------------------------------------------------------------------------ masks, mosaics, overviews
@pytest.mark.parametrize("kind", ["nodata", "alpha", "internal mask"])
def test_areas_without_imagery_are_uncovered(tmp_path, kind):
    """The west half is invalid, marked by each of the three GeoTIFF ways."""
    sat = new_city(tmp_path)
    img = pattern()
    valid = np.zeros((400, 400), np.uint8)
    valid[:, 200:] = 255
    if kind == "nodata":
        img[:, valid == 0] = 0
        write_tif(sat / "a.tif", img, nodata=0)
    elif kind == "alpha":
        write_tif(sat / "a.tif", np.concatenate([img, valid[None]]), photometric="RGB", alpha="YES")
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            write_tif(sat / "a.tif", img)
            with rasterio.open(sat / "a.tif", "r+") as ds:
                ds.write_mask(valid)
    summary = build_pyramid(sat.parent, SPEC, progress=False)
    with PyramidReader(summary.path) as pyr:
        # cells NW, NE, SW, SE; a pixel counts as covered if any imagery falls in it, so the
        # column of pixels straddling the seam may count: 1/32 of a cell.
        np.testing.assert_allclose(pyr.coverage(1), [0, 1, 0, 1], atol=1 / 32 + 1e-3)
        west = pyr.views(1, [0, 2])
        terminal = pyr.coverage(3).reshape(8, 8)
    assert summary.coverage == pytest.approx(0.5, abs=1 / 32)
    assert np.all(west[:, :, :-1] == 0), "no imagery: filled with black (bar the column on the seam)"
    np.testing.assert_allclose(terminal[:, :4], 0, atol=0.1)  # a 40 m cell is 10.7 px of its context crop
    np.testing.assert_allclose(terminal[:, 4:], 1, atol=0.1)


def test_two_files_in_two_crs_make_one_mosaic(tmp_path):
    """West: red, UTM 33N. East: blue, WGS84 lon/lat, overlapping the west by 40 m."""
    sat = new_city(tmp_path)
    red = np.zeros((3, 400, 220), np.uint8)
    red[0] = 200
    write_tif(sat / "a_west.tif", red)
    w, s, e, n = transform_bounds(UTM33, "EPSG:4326", X0 + 180, Y0 - 400, X0 + 400, Y0)
    blue = np.zeros((3, 500, 300), np.uint8)
    blue[2] = 200
    write_tif(sat / "b_east.tif", blue, crs="EPSG:4326", transform=from_bounds(w, s, e, n, 300, 500))
    summary = build_pyramid(sat.parent, SPEC, progress=False)
    with PyramidReader(summary.path) as pyr:
        grid = pyr.grid
        assert summary.coverage == pytest.approx(1.0) and np.all(pyr.coverage(2) == pytest.approx(1.0))
        for level in (1, 2):
            n = grid.cells_per_side(level)
            for cell, view in enumerate(pyr.views(level, np.arange(n * n))):
                # Red (the first file lies on top) up to x = X0 + 220, then blue.
                left = grid.bounds_of_rowcol(cell // n, cell % n, level)[0] + np.arange(32) * grid.cell_size(level) / 32
                right = left + grid.cell_size(level) / 32
                assert np.all(view[:, right <= X0 + 220] == [200, 0, 0])
                assert np.all(view[:, left >= X0 + 220] == [0, 0, 200])


@pytest.mark.parametrize("overviews", [[2, 4, 8], []])
def test_source_overviews_are_read_when_shrinking(tmp_path, overviews):
    """A 1-px checkerboard: its nearest-neighbour overviews are uniform, its average is 127.5.

    The level-0 view (12.5 m pixels from 1 m) is uniform if and only if an overview was read.
    """
    sat = new_city(tmp_path)
    board = np.broadcast_to(((np.indices((400, 400)).sum(0) % 2) * 255).astype(np.uint8), (3, 400, 400))
    write_tif(sat / "board.tif", board)
    if overviews:
        with rasterio.open(sat / "board.tif", "r+") as ds:
            ds.build_overviews(overviews, Resampling.nearest)
    spec = PyramidSpec(k=2, levels=1, terminal_m=None, side_m=200.0, px=16)
    summary = build_pyramid(sat.parent, spec, progress=False)
    with PyramidReader(summary.path) as pyr:
        view = pyr.views(0, [0])[0]
    if overviews:
        assert len(np.unique(view)) == 1 and view[0, 0, 0] in (0, 255)
        # 8 m overview pixels: 1/64 of the 0.4 Mpx read at full resolution (level 0 + 9 context phases).
        assert summary.source_mpx == pytest.approx(0.4 / 64, rel=0.05)
    else:
        assert np.all(np.abs(view.astype(int) - 127.5) <= 1)
        assert summary.source_mpx == pytest.approx(0.4, rel=0.05)


# ------------------------------------------------------------------------------ reader
def test_reader_api(built):
    with PyramidReader(built.path) as pyr, h5py.File(built.path, "r") as h5:
        grid = pyr.grid
        assert pyr.px == 32 and pyr.context_factor == 3.0 and pyr.sources[0]["file"] == "pattern.tif"
        level2, context = h5["views/level_2"][()], h5["context/terminal"][()]
        np.testing.assert_array_equal(pyr.views(2, [5, 1, 5]), level2[[5, 1, 5]])
        np.testing.assert_array_equal(pyr.context([63, 0]), context[[63, 0]])
        np.testing.assert_array_equal(pyr.coverage(3), h5["coverage/terminal"][()])
        assert pyr.views(1, []).shape == (0, 32, 32, 3)
        paths = np.array([[0, 3, 1], [2, 2, 0]])
        seen = pyr.views_of_paths(paths)
        assert seen.shape == (2, 3, 32, 32, 3)
        for i in range(3):
            np.testing.assert_array_equal(seen[:, i], pyr.views(i, grid.cell_of_path(paths[:, :i])))
        with pytest.raises(IndexError):
            pyr.views(3, [0])
        with pytest.raises(IndexError):
            pyr.views(1, [4])
        pyr.check_grid(grid)
        with pytest.raises(PyramidError, match="another grid"):
            pyr.check_grid(ZoomGrid(grid.crs_wkt, grid.origin_x + 10, grid.origin_y, grid.side_m, grid.k, grid.levels))
        clone = pickle.loads(pickle.dumps(pyr))  # what a DataLoader worker gets: reopens lazily
        np.testing.assert_array_equal(clone.views(0, [0]), pyr.views(0, [0]))
        clone.close()


def _truncated(src, dst):
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])


def _other_version(src, dst):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as h5:
        h5.attrs["format_version"] = 2


def _missing_dataset(src, dst):
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as h5:
        del h5["views/level_1"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda src, dst: dst.write_text("not hdf5"), "not a readable zoomloc pyramid"),
        (_truncated, r"not a readable zoomloc pyramid \(truncated or corrupt\)"),
        (_other_version, "format version 2; this zoomloc reads version 1"),
        (_missing_dataset, "no dataset views/level_1"),
    ],
)
def test_reader_rejects_bad_files(built, tmp_path, damage, message):
    bad = tmp_path / "bad.h5"
    damage(built.path, bad)
    with pytest.raises(PyramidError, match=message) as err:
        with PyramidReader(bad):
            pass
    assert str(err.value).startswith(str(bad))


# ------------------------------------------------------------------------------ atomicity
def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    sat = new_city(tmp_path)
    write_tif(sat / "pattern.tif", pattern())
    render = raster.Mosaic.render
    calls = []

    def failing_render(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(self, *args, **kwargs)

    monkeypatch.setattr(raster.Mosaic, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        build_pyramid(sat.parent, SPEC, progress=False)
    assert sorted(p.name for p in sat.parent.iterdir()) == ["satellite"]


# ------------------------------------------------------------------------------ CLI and input errors
def _no_crs(sat):
    write_tif(sat / "bad.tif", pattern(), crs=None)


def _no_transform(sat):
    write_tif(sat / "bad.tif", pattern(), transform=None)


def _gcps_only(sat):
    write_tif(sat / "bad.tif", pattern(), transform=None)
    with rasterio.open(sat / "bad.tif", "r+") as ds:
        ds.gcps = ([GroundControlPoint(0, 0, X0, Y0), GroundControlPoint(400, 400, X0 + 400, Y0 - 400)], UTM33)


def _two_bands(sat):
    write_tif(sat / "bad.tif", pattern()[:2])


def _not_a_tiff(sat):
    (sat / "bad.tif").write_text("this is not an image\n")


def _truncated_tiff(sat):
    write_tif(sat / "full.tif", pattern(), compress="deflate")
    data = (sat / "full.tif").read_bytes()
    (sat / "full.tif").unlink()
    (sat / "bad.tif").write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize(
    "make, problem",
    [
        (_no_crs, "no CRS"),
        (_no_transform, "no geotransform"),
        (_gcps_only, "ground control points"),
        (_two_bands, "has 2 bands"),
        (_not_a_tiff, "not a readable GeoTIFF"),
        (_truncated_tiff, "is corrupt or truncated"),
    ],
)
def test_cli_rejects_bad_geotiffs(tmp_path, capsys, make, problem):
    sat = new_city(tmp_path)
    write_tif(sat / "good.tif", pattern())
    make(sat)
    code = main(["build-pyramid", str(sat.parent), "--grid", "2", "--levels", "2", "--side-m", "320", "--px", "16", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(sat / "bad.tif") in err and problem in err, err
    assert not (sat.parent / "pyramid.h5").exists()


@pytest.mark.parametrize("case", ["empty satellite folder", "bbox outside the imagery"])
def test_cli_rejects_bad_cities(tmp_path, capsys, case):
    sat = new_city(tmp_path)
    args = ["build-pyramid", str(sat.parent), "--grid", "2", "--levels", "2", "--px", "16", "--quiet"]
    if case == "bbox outside the imagery":
        write_tif(sat / "good.tif", pattern())
        args += ["--bbox", "10.0", "50.0", "10.01", "50.01"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(sat) in err, err
    assert ("does not overlap the imagery" in err) == (case == "bbox outside the imagery")
    assert not (sat.parent / "pyramid.h5").exists()


def test_cli_builds_to_out(tmp_path, capsys):
    sat = new_city(tmp_path)
    write_tif(sat / "good.tif", pattern())
    out = tmp_path / "elsewhere" / "p.h5"
    code = main(
        ["build-pyramid", str(sat.parent), "--grid", "2", "--levels", "2", "--terminal-m", "50", "--px", "16", "--out", str(out), "--quiet"]
    )
    assert code == 0 and out.is_file() and not (sat.parent / "pyramid.h5").exists()
    assert f"wrote {out}" in capsys.readouterr().out
    with PyramidReader(out) as pyr:
        assert pyr.grid.side_m == pytest.approx(200.0) and pyr.px == 16


# ------------------------------------------------------------------------------ band layouts and data types
def _gradient(dtype, scale):
    """Values rising from west to east: 0..399 × scale."""
    return (np.broadcast_to(np.arange(400), (400, 400)) * scale).astype(dtype)


@pytest.mark.parametrize("layout", ["uint16 rgb", "float32 grey with nodata", "uint8 grey with alpha"])
def test_other_band_layouts_become_rgb(tmp_path, layout):
    sat = new_city(tmp_path)
    if layout == "uint16 rgb":
        write_tif(sat / "a.tif", np.stack([_gradient(np.uint16, 10)] * 3), photometric="RGB")
    elif layout == "float32 grey with nodata":
        band = _gradient(np.float32, 0.01)
        band[:, :200] = -9999.0
        write_tif(sat / "a.tif", band, nodata=-9999.0)
    else:
        alpha = np.where(np.arange(400) < 200, 0, 255).astype(np.uint8)
        write_tif(sat / "a.tif", np.stack([_gradient(np.uint8, 0.5), np.broadcast_to(alpha, (400, 400))]), alpha="YES")
    spec = PyramidSpec(k=2, levels=1, terminal_m=None, side_m=400.0, px=32)  # the whole image
    summary = build_pyramid(sat.parent, spec, progress=False)
    with PyramidReader(summary.path) as pyr:
        view = pyr.views(0, [0])[0].astype(int)
    shown = view[:, (view > 0).any(axis=(0, 2))]  # the covered columns
    assert np.array_equal(view[..., 0], view[..., 1]) and np.array_equal(view[..., 0], view[..., 2])
    assert np.all(np.diff(shown[..., 0].mean(axis=0)) > 0), "the gradient survives, west to east"
    if layout != "uint8 grey with alpha":  # 8-bit is kept as is; other types are stretched
        assert shown.min() <= 10 and shown.max() >= 245
    assert summary.coverage == pytest.approx(1.0 if layout == "uint16 rgb" else 0.5, abs=1 / 32)
