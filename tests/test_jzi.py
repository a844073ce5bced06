"""The Just Zoom In dataset (``zoomloc import-jzi``) and web-map tile sources, on a miniature of its layout.

The miniature is made here, each session: a real orthophoto's pixels (``../shared/realdata``,
skipped when absent) placed inside the paper's 10 km square in DC and cut into a tiledwebmaps
folder (zoom 0 and -1, 128 px tiles) and an XYZ folder (web mercator, zoom 20), the same pixels
kept as a GeoTIFF; and a few generated photos whose ``sequence`` comes from an independent
reference, the official code's own way of finding a cell: moves east then north from its parent's
centre along great circles (``tiledwebmaps.geo.move_from_latlon``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
from conftest import write_run_config  # tests/ is on sys.path under pytest
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

from data_prep.jzi import CENTRE_LATLON, CSVS, IMAGE_SUFFIX, LEVELS, REGION_BOUNDS_M, K, paper_grid
from data_prep.split import SplitConfig, config_mismatch
from zoomloc.cli.main import main
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader, PyramidSpec, build_pyramid
from zoomloc.geo.tiles import tiles_vrt

ORTHO = "manila_ph_0.10m_epsg3395.tif"  # 2048² RGB at 0.10 m
TILE_CRS = "EPSG:26985"  # NAD83 / Maryland, metres: the DC orthophoto's own CRS
TILE_PX, RES = 128, 0.1
XYZ_ZOOM = 20
N_PHOTOS = 48
PX = 16  # pyramid views: tiny, the miniature checks placement, not looks


# ----------------------------------------------------------------------------- the official frame
def official_centre(path) -> tuple[float, float]:
    """(lat, lon) of the cell centre the official code reaches along ``path`` (its dataset's loader)."""
    import tiledwebmaps as twm

    def move(latlon, east, north):
        return twm.geo.move_from_latlon(twm.geo.move_from_latlon(latlon, 90, east), 0, north)

    west, east, south, north = REGION_BOUNDS_M
    centre, size = move(np.array(CENTRE_LATLON), (west + east) / 2, (south + north) / 2), east - west
    for action in path:
        row, col = divmod(int(action), K)
        child = size / K
        centre = move(centre, (col + 0.5) * child - size / 2, -((row + 0.5) * child - size / 2))
        size = child
    return float(centre[0]), float(centre[1])


# ----------------------------------------------------------------------------- the miniature
@pytest.fixture(scope="module")
def jzi_root(realdata, tmp_path_factory) -> Path:
    """A miniature JZI_ROOT: tiles of a real orthophoto in DC, photos with official sequences, and the GeoTIFF."""
    root = tmp_path_factory.mktemp("jzi")
    with rasterio.open(realdata / "orthophotos" / ORTHO) as src:
        rgb = src.read([1, 2, 3])
    grid = paper_grid()
    # The orthophoto's NW corner, in the tile CRS: near the centre of the region, on the tile grid.
    x0, y0 = _to_tile_crs(grid, 1000.0, 200.0)
    x0, y0 = round(x0 / 12.8) * 12.8, round(y0 / 12.8) * 12.8
    _write_geotiff(root / "reference.tif", rgb, x0, y0)
    _write_layout_folder(root / "satellite", rgb, x0, y0)
    _write_xyz_folder(root / "xyz", root / "reference.tif")
    _write_photos(root, grid)
    return root


def _to_tile_crs(grid, x: float, y: float) -> tuple[float, float]:
    from pyproj import Transformer

    lon, lat = grid.to_lonlat(x, y)
    return Transformer.from_crs("EPSG:4326", TILE_CRS, always_xy=True).transform(float(lon), float(lat))


def _write_geotiff(path: Path, rgb: np.ndarray, x0: float, y0: float) -> None:
    profile = dict(driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3, dtype="uint8", crs=TILE_CRS)
    with rasterio.open(path, "w", transform=from_origin(x0, y0, RES, RES), **profile) as dst:
        dst.write(rgb)


def _write_layout_folder(folder: Path, rgb: np.ndarray, x0: float, y0: float) -> None:
    """A tiledwebmaps folder: zoom 0 (0.1 m, 128 px tiles) and zoom -1 (tiles twice as large)."""
    side = TILE_PX * RES * 2**12  # the layout's extent: tile (0, 0) of zoom 0 has its NW corner at (x0, y0)
    layout = {
        "crs": TILE_CRS,
        "tile_shape_px": [TILE_PX, TILE_PX],
        "tile_shape_crs": [TILE_PX * RES, TILE_PX * RES],
        "origin_crs": [x0, y0 - side],
        "size_crs": [side, side],
        "tile_axes": ["east", "south"],
        "min_zoom": -1,
        "max_zoom": 0,
        "path": "{zoom}/{x}/{y}.jpg",
    }
    folder.mkdir(parents=True)
    (folder / "layout.yaml").write_text(yaml.safe_dump(layout))
    image = np.moveaxis(rgb, 0, -1)
    for zoom, img in ((0, image), (-1, image[::2, ::2])):
        n = img.shape[0] // TILE_PX
        for x in range(n):
            (folder / str(zoom) / str(x)).mkdir(parents=True)
            for y in range(n):
                tile = img[y * TILE_PX : (y + 1) * TILE_PX, x * TILE_PX : (x + 1) * TILE_PX]
                Image.fromarray(np.ascontiguousarray(tile)).save(folder / str(zoom) / str(x) / f"{y}.jpg", quality=95)


def _write_xyz_folder(folder: Path, geotiff: Path) -> None:
    """Web-mercator tiles of zoom XYZ_ZOOM warped from the GeoTIFF (RGBA PNG, transparent outside it)."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    with rasterio.open(geotiff) as src:
        from rasterio.warp import transform_bounds

        w, s, e, n = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        for t in tms.tiles(w, s, e, n, [XYZ_ZOOM]):
            b = tms.xy_bounds(t)
            out = np.zeros((4, 256, 256), np.uint8)
            dst_transform = from_origin(b.left, b.top, (b.right - b.left) / 256, (b.top - b.bottom) / 256)
            reproject(
                rasterio.band(src, [1, 2, 3]),
                out[:3],
                dst_transform=dst_transform,
                dst_crs="EPSG:3857",
                resampling=Resampling.bilinear,
            )
            valid = np.ones((256, 256), np.uint8)
            reproject(
                np.full((src.height, src.width), 255, np.uint8),
                valid,
                src_transform=src.transform,
                src_crs=src.crs,
                dst_transform=dst_transform,
                dst_crs="EPSG:3857",
                resampling=Resampling.nearest,
                dst_nodata=0,
            )
            out[3] = valid
            (folder / str(t.z) / str(t.x)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.moveaxis(out, 0, -1), "RGBA").save(folder / str(t.z) / str(t.x) / f"{t.y}.png")


def _write_photos(root: Path, grid) -> None:
    """Small JPEGs, and CSVs whose sequences come from the official frame (jittered inside their cells)."""
    rng = np.random.default_rng(0)
    images = root / "streetview" / "images"
    images.mkdir(parents=True)
    terminal = grid.terminal_m
    rows = []
    for i in range(N_PHOTOS):
        path = rng.integers(0, K * K, LEVELS)
        lat, lon = official_centre(path)
        # Up to a third of a cell from the official centre: the frames differ by 1.2 m at most.
        dx, dy = rng.uniform(-terminal / 3, terminal / 3, 2)
        lat, lon = lat + dy / 111_320.0, lon + dx / (111_320.0 * np.cos(np.radians(lat)))
        image_id = f"{1000 + i}"
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(images / f"{image_id}{IMAGE_SUFFIX}")
        rows.append({"image_id": image_id, "latitude": lat, "longitude": lon, "sequence": str(path.tolist()), "sequence_id": f"s{i % 6}"})
    table = pd.DataFrame(rows)
    (root / "metadata").mkdir()
    table.iloc[: N_PHOTOS * 3 // 4].to_csv(root / "metadata" / CSVS["train"], index=False)
    table.iloc[N_PHOTOS * 3 // 4 :].to_csv(root / "metadata" / CSVS["val"], index=False)


def _copy_root(jzi_root: Path, dst: Path) -> Path:
    """A copy of the miniature to spoil (the tiles as a link: cases that spoil tiles copy them)."""
    shutil.copytree(jzi_root, dst, ignore=shutil.ignore_patterns("xyz", "reference.tif"))
    return dst


@pytest.fixture(scope="module")
def city(jzi_root, tmp_path_factory) -> Path:
    """The miniature imported through the CLI, its pyramid built with no flag but the views' size."""
    city = tmp_path_factory.mktemp("jzi_city") / "city"
    assert main(["import-jzi", str(jzi_root), "--city", str(city), "--val-fraction", "0.1"]) == 0
    assert main(["build-pyramid", str(city), "--px", str(PX), "--quiet"]) == 0
    return city


def _imagery_city(folder: Path, place) -> Path:
    """A city folder with only imagery (``place`` puts it into satellite/) and the paper's region, pyramid built."""
    (folder / "satellite").mkdir(parents=True)
    place(folder / "satellite")
    CityDir(folder).write_region(paper_grid())
    build_pyramid(folder, PyramidSpec(px=PX), progress=False)
    return folder


@pytest.fixture(scope="module")
def pyramids(jzi_root, city, tmp_path_factory) -> dict[str, Path]:
    """The pyramids of the same pixels as a GeoTIFF, a tiledwebmaps folder and an XYZ folder."""
    tmp = tmp_path_factory.mktemp("jzi_imagery")
    return {
        "geotiff": _imagery_city(tmp / "tif", lambda sat: shutil.copy(jzi_root / "reference.tif", sat)) / "pyramid.h5",
        "tiledwebmaps": city / "pyramid.h5",
        "xyz": _imagery_city(tmp / "xyz", lambda sat: (sat / "xyz").symlink_to(jzi_root / "xyz")) / "pyramid.h5",
    }


# ----------------------------------------------------------------------------- the region
def test_official_cell_centres_lie_within_a_metre_and_a_half_of_the_grids(jzi_root):
    grid = paper_grid()
    paths = np.random.default_rng(1).integers(0, K * K, (300, LEVELS))
    lat, lon = np.array([official_centre(p) for p in paths]).T
    x, y = grid.to_xy(lon, lat)
    cx, cy = grid.centre_xy_of_path(paths)
    assert np.hypot(x - cx, y - cy).max() < 1.5


def test_every_sequence_is_the_grids_path_of_its_photo(jzi_root):
    grid = paper_grid()
    for name in CSVS.values():
        table = pd.read_csv(jzi_root / "metadata" / name)
        sequences = np.array([json.loads(s) for s in table["sequence"]])
        np.testing.assert_array_equal(grid.path_of_lonlat(table["longitude"], table["latitude"]), sequences)


# ----------------------------------------------------------------------------- the import
def test_import_writes_photos_metadata_region_and_the_given_split(jzi_root, city):
    meta = pd.read_csv(city / "streetview" / "metadata.csv", dtype={"image_id": str})
    assert list(meta.columns) == ["image_id", "lon", "lat", "sequence_id"] and len(meta) == N_PHOTOS
    photo = city / "streetview" / "images" / f"{meta['image_id'][0]}.jpg"
    assert photo.stat().st_ino == (jzi_root / "streetview" / "images" / f"{meta['image_id'][0]}{IMAGE_SUFFIX}").stat().st_ino
    split = pd.read_csv(city / "split.csv", dtype={"image_id": str}).set_index("image_id")["split"]
    val_csv = pd.read_csv(jzi_root / "metadata" / CSVS["val"], dtype={"image_id": str})
    assert set(split[split == "test"].index) == set(val_csv["image_id"])
    assert (split == "val").sum() == round(0.1 * (N_PHOTOS - len(val_csv)))
    assert CityDir(city).read_region().same_region(paper_grid())
    assert config_mismatch(city, SplitConfig(by="given")) is None
    assert config_mismatch(city, SplitConfig(by="photo")) is not None


def test_build_pyramid_cuts_the_papers_region_with_no_flag(city):
    with PyramidReader(city / "pyramid.h5") as pyr:
        assert pyr.grid.same_region(paper_grid()) and (pyr.grid.k, pyr.grid.levels) == (K, LEVELS)


# ----------------------------------------------------------------------------- tile sources
@pytest.mark.parametrize("layout", ["tiledwebmaps", "xyz"])
def test_tile_views_match_the_geotiffs(pyramids, layout):
    """The pyramid of the tiles and that of the same pixels as a GeoTIFF: MAD <= 3 grey levels."""
    with PyramidReader(pyramids["geotiff"]) as ref, PyramidReader(pyramids[layout]) as got:
        full = np.flatnonzero(ref._file()["coverage/terminal"][:] > 0.999)
        assert len(full) >= 16
        mad = np.abs(ref.context(full).astype(int) - got.context(full).astype(int)).mean()
        print(f"{layout}: MAD {mad:.2f} over {len(full)} terminal views")
        assert mad <= 3
        # Coverage agrees up to one view pixel along the imagery's edges (a cell spans PX pixels, a terminal cell PX / 3).
        for name, row in [*((f"level_{lv}", 1 / PX) for lv in range(LEVELS)), ("terminal", 3 / PX)]:
            have, want = (p._file()[f"coverage/{name}"][:] for p in (got, ref))
            assert np.abs(have - want).max() <= row + 1e-6, name


def test_a_coarser_zoom_level_is_the_mosaics_overview(jzi_root, tmp_path):
    """Zoom -1 of the layout covers zoom 0: GDAL reads it as the 2× overview (its own tiles, pixel for pixel)
    rather than averaging every tile of zoom 0; a coarse level with a hole is left out."""
    with rasterio.open(tiles_vrt(jzi_root / "satellite", tmp_path / "whole")) as ds:
        assert ds.overviews(1) == [2]
    with rasterio.open(tmp_path / "whole" / "satellite.vrt", overview_level=0) as ovr:
        corner = ovr.read([1, 2, 3], window=Window(0, 0, TILE_PX, TILE_PX))
    with Image.open(jzi_root / "satellite" / "-1" / "0" / "0.jpg") as tile:
        assert np.array_equal(np.moveaxis(corner, 0, -1), np.asarray(tile.convert("RGB")))
    holed = tmp_path / "holed"
    shutil.copytree(jzi_root / "satellite", holed)
    (holed / "-1" / "0" / "0.jpg").unlink()
    with rasterio.open(tiles_vrt(holed, tmp_path / "holed_vrt")) as ds:
        assert ds.overviews(1) == []


# ----------------------------------------------------------------------------- train and evaluate
def test_a_model_trains_and_evaluates_on_the_imported_city(city, tmp_path):
    """On the first two levels of the paper's grid: an evaluation embeds every view, 87 000 of them over four."""
    short = tmp_path / "city"
    shutil.copytree(city, short, symlinks=True, ignore=shutil.ignore_patterns("pyramid.h5", "tiles", "embeddings"))
    CityDir(short).write_region(replace(paper_grid(), levels=2))
    build_pyramid(short, PyramidSpec(px=PX), progress=False)
    config = write_run_config(tmp_path, steps=4, val_every=2, workers=0)
    run = tmp_path / "run"
    assert main(["train", str(short), "--config", str(config), "--out", str(run), "--quiet"]) == 0
    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", str(short), "--model", str(run), "--split", "test", "--out", str(metrics), "--no-references", "--quiet"]) == 0
    assert json.loads(metrics.read_text())["n_queries"] == N_PHOTOS // 4


# ----------------------------------------------------------------------------- bad inputs
def _refused(argv: list[str], capsys, *names: str) -> None:
    """``zoomloc argv`` exits 2 with one line on stderr naming ``names``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for name in names:
        assert name in err[0], err[0]


def test_a_dataset_without_layout_yaml_is_refused(jzi_root, tmp_path, capsys):
    root = _copy_root(jzi_root, tmp_path / "jzi")
    (root / "satellite" / "layout.yaml").unlink()
    _refused(["import-jzi", str(root), "--city", str(tmp_path / "city")], capsys, str(root), "layout.yaml")
    assert not (tmp_path / "city").exists()


def test_a_sequence_that_disagrees_with_its_position_is_refused(jzi_root, tmp_path, capsys):
    root = _copy_root(jzi_root, tmp_path / "jzi")
    csv = root / "metadata" / CSVS["val"]
    table = pd.read_csv(csv)
    path = json.loads(table.loc[2, "sequence"])
    path[1] = (path[1] + 5) % (K * K)
    table.loc[2, "sequence"] = str(path)
    table.to_csv(csv, index=False)
    _refused(["import-jzi", str(root), "--city", str(tmp_path / "city")], capsys, str(csv), "line 4", "sequence")
    assert not (tmp_path / "city").exists()


def test_tiles_of_mixed_sizes_are_refused(jzi_root, tmp_path, capsys):
    city = tmp_path / "city"
    shutil.copytree(jzi_root / "xyz", city / "satellite" / "xyz")
    odd = sorted((city / "satellite" / "xyz").rglob("*.png"))[3]
    Image.new("RGB", (128, 128)).save(odd)
    CityDir(city).write_region(paper_grid())
    _refused(["build-pyramid", str(city), "--px", str(PX), "--quiet"], capsys, str(odd), "128×128")
    assert not (city / "pyramid.h5").exists()


def test_a_zoom_level_absent_from_the_folder_is_refused(jzi_root, tmp_path, capsys):
    city = tmp_path / "city"
    shutil.copytree(jzi_root / "satellite", city / "satellite" / "jzi")
    layout = city / "satellite" / "jzi" / "layout.yaml"
    layout.write_text(layout.read_text().replace("max_zoom: 0", "max_zoom: 1"))
    CityDir(city).write_region(paper_grid())
    _refused(["build-pyramid", str(city), "--px", str(PX), "--quiet"], capsys, str(layout), "zoom level 1")
    assert not (city / "pyramid.h5").exists()


@pytest.mark.slow  # two models trained and evaluated with the references: a minute or two (make test-all, CI)
def test_the_benchmark_runs_on_the_imported_city_with_its_given_split(city, tmp_path):
    """The second of the two commands: ``zoomloc benchmark --city CITY`` on the dataset's own split
    (zoom and retrieval, same budget), the pyramid built from the region with no flag."""
    short = tmp_path / "city"
    shutil.copytree(city, short, symlinks=True, ignore=shutil.ignore_patterns("pyramid.h5", "tiles", "embeddings"))
    CityDir(short).write_region(replace(paper_grid(), levels=2))  # as above: 2 levels embed in seconds
    runs = {kind: write_run_config(tmp_path, steps=4, val_every=2, workers=0, kind=kind) for kind in ("zoom", "retrieval")}
    config = tmp_path / "bench.yaml"
    config.write_text(f"protocols: [given]\npyramid: {{px: {PX}}}\nzoom: {runs['zoom'].name}\nretrieval: {runs['retrieval'].name}\n")
    out = tmp_path / "out"
    assert main(["benchmark", "--config", str(config), "--city", str(short), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    given = results["protocols"]["given"]
    assert list(results["protocols"]) == ["given"] and given["zoom"]["n_queries"] == given["retrieval"]["n_queries"] == N_PHOTOS // 4
    assert (out / "given" / "city" / "split.csv").read_bytes() == (short / "split.csv").read_bytes()  # the dataset's, not redrawn
