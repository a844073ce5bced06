"""The synthetic city: end to end through the CLI, reproducibility, and cross-view consistency."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import CRS, Transformer

from data_prep.capture import CAPTURE_SUNS, CaptureParams, capture_surfaces, sample_sequences
from data_prep.overhead import cast_shadows
from data_prep.scene import BUILDING, ROAD_CLASSES, build_scene
from data_prep.street import StreetRenderer
from data_prep.synth import SynthCityConfig
from zoomloc.cli.main import main
from zoomloc.core.errors import ConfigError
from zoomloc.geo.citydir import CityDir

SIZE_M = 300
IMAGES = 120
WIDTH, HEIGHT = 160, 96

CONFIG = f"""\
centre_lon: -73.9857
centre_lat: 40.7484
camera:
  width: {WIDTH}
  height: {HEIGHT}
"""


def _synth(root: Path, name: str, seed: int, extra: str = "") -> Path:
    config = root / f"{name}.yaml"
    config.write_text(CONFIG + extra)
    city = root / name
    args = ["synth-city", str(city), "--config", str(config), "--seed", str(seed)]
    assert main(args + ["--size-m", str(SIZE_M), "--images", str(IMAGES), "--quiet"]) == 0
    return city


@pytest.fixture(scope="module")
def cities(tmp_path_factory) -> dict[str, Path]:
    """Seed 0 twice (parallel workers and a single process), and seed 1."""
    root = tmp_path_factory.mktemp("synth")
    return {
        "a": _synth(root, "a", 0),
        "a_serial": _synth(root, "a_serial", 0, "workers: 1\n"),
        "b": _synth(root, "b", 1),
    }


def _files(city: Path) -> dict[str, bytes]:
    paths = [city / "satellite" / "ortho.tif", city / "streetview" / "metadata.csv"]
    paths += sorted((city / "streetview" / "images").glob("*.jpg"))
    return {str(p.relative_to(city)): p.read_bytes() for p in paths}


def test_city_directory_is_complete_and_georeferenced(cities):
    city = CityDir(cities["a"])
    meta = city.read_metadata()
    assert len(meta) == IMAGES
    assert set(meta.columns) >= {"image_id", "lon", "lat", "heading_deg", "fov_deg"}
    assert meta["heading_deg"].between(0, 360).all() and meta["fov_deg"].between(60, 100).all()
    for image_id in meta["image_id"]:
        with Image.open(city.image_path(image_id)) as img:
            assert img.size == (WIDTH, HEIGHT) and img.mode == "RGB"
    [tif] = city.satellite_files()
    with rasterio.open(tif) as ds:
        assert (ds.count, ds.dtypes[0], ds.width) == (3, "uint8", SIZE_M * 2)
        assert CRS(ds.crs).to_epsg() == 32618  # UTM 18N, Manhattan
        assert ds.block_shapes[0] == (256, 256) and ds.compression.name.lower() == "deflate" and ds.overviews(1)
        x, y = Transformer.from_crs(4326, ds.crs, always_xy=True).transform(meta["lon"].values, meta["lat"].values)
        left, bottom, right, top = ds.bounds
        assert ((x > left) & (x < right) & (y > bottom) & (y < top)).all()


def test_same_seed_same_bytes_different_seed_different(cities):
    a, serial, b = (_files(cities[k]) for k in ("a", "a_serial", "b"))
    assert a.keys() == serial.keys()
    assert [k for k in a if a[k] != serial[k]] == []
    assert a["satellite/ortho.tif"] != b["satellite/ortho.tif"]
    assert a["streetview/metadata.csv"] != b["streetview/metadata.csv"]
    assert sum(a[k] != b.get(k) for k in a if k.endswith(".jpg")) == IMAGES


def test_street_views_are_not_trivial(cities):
    images = [np.asarray(Image.open(p)) for p in sorted((cities["a"] / "streetview" / "images").glob("*.jpg"))]
    # A blank render (all sky, all asphalt) has a std of 2-3 from noise alone; a photo facing
    # one wall close up, the plainest real view, about 10.
    assert min(float(img.std()) for img in images) > 6
    assert np.std([img.mean() for img in images]) > 3  # not all the same picture


def _poses(city: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid (row, col) of every camera in the orthophoto, and headings."""
    meta = CityDir(city).read_metadata()
    with rasterio.open(city / "satellite" / "ortho.tif") as ds:
        x, y = Transformer.from_crs(4326, ds.crs, always_xy=True).transform(meta["lon"].values, meta["lat"].values)
        rows, cols = rasterio.transform.rowcol(ds.transform, x, y, op=float)
    return np.asarray(rows), np.asarray(cols), meta["heading_deg"].to_numpy()


def test_cameras_stand_on_roads_of_the_orthophoto(cities):
    """Cross-view: the orthophoto under every camera is asphalt grey (or a lane marking)."""
    city = cities["a"]
    rows, cols, _ = _poses(city)
    with rasterio.open(city / "satellite" / "ortho.tif") as ds:
        rgb = ds.read().transpose(1, 2, 0).astype(float)
    px = rgb[rows.astype(int), cols.astype(int)]
    grey = np.ptp(px, axis=1) < 25
    assert grey.mean() > 0.9
    scene = build_scene(SynthCityConfig().scene, SIZE_M, 0.5, 0)
    assert np.isin(scene.cls[rows.astype(int), cols.astype(int)], ROAD_CLASSES).all()


def test_photos_facing_a_near_tall_building_show_a_wall_not_sky(cities):
    """Cross-view: where the scene has a tall building straight ahead, the photo's upper middle is not sky."""
    city = cities["a"]
    rows, cols, heading = _poses(city)
    scene = build_scene(SynthCityConfig().scene, SIZE_M, 0.5, 0)
    t = np.arange(1.0, 20.0, 0.25)  # metres ahead
    h = np.radians(heading)[:, None]
    r = np.clip((rows[:, None] - t * np.cos(h) / 0.5).astype(int), 0, scene.n - 1)
    c = np.clip((cols[:, None] + t * np.sin(h) / 0.5).astype(int), 0, scene.n - 1)
    wall = ((scene.cls[r, c] == BUILDING) & (scene.height[r, c] > 12)).any(axis=1)
    open_view = (scene.height[r, c] < 1).all(axis=1)

    def skyness(image_id: str) -> float:
        img = np.asarray(Image.open(CityDir(city).image_path(image_id))).astype(float)
        block = img[int(HEIGHT * 0.12) : int(HEIGHT * 0.3), WIDTH // 2 - 6 : WIDTH // 2 + 6]
        return float(((block[..., 2] > block[..., 0] + 8) & (block.mean(axis=2) > 140)).mean())

    ids = CityDir(city).read_metadata()["image_id"].to_numpy()
    sky_wall = [skyness(i) for i in ids[wall]]
    sky_open = [skyness(i) for i in ids[open_view & ~wall]]
    assert len(sky_wall) >= 5 and len(sky_open) >= 5
    assert np.mean(sky_wall) < 0.1
    assert np.mean(sky_open) > np.mean(sky_wall) + 0.2


def test_refuses_a_city_directory_with_data(cities, capsys):
    assert main(["synth-city", str(cities["a"]), "--size-m", "100", "--images", "1", "--quiet"]) == 2
    assert "already holds data" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, key",
    [
        ("imagez: 5\n", "imagez"),
        ("images: many\n", "images"),
        ("images: 2.5\n", "images"),
        ("scene:\n  blok_m: [50, 90]\n", "scene.blok_m"),
        ("camera:\n  fov_deg: [60]\n", "camera.fov_deg"),
        ("scene:\n  river: 1\n", "scene.river"),
        ("camera: 3\n", "camera"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path, text, key):
    path = tmp_path / "city.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}: .*{key}"):
        SynthCityConfig.from_yaml(path)


def test_config_bad_values_and_cli_report(tmp_path, capsys):
    path = tmp_path / "city.yaml"
    path.write_text("camera:\n  fov_deg: [100, 60]\n")
    with pytest.raises(ConfigError, match="fov_deg"):
        SynthCityConfig.from_yaml(path)
    assert main(["synth-city", str(tmp_path / "c"), "--config", str(path), "--quiet"]) == 2
    assert "fov_deg" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_replace_ignores_unset_options():
    cfg = SynthCityConfig().replace(seed=None, size_m=800.0, gsd=None, images=None)
    assert (cfg.seed, cfg.size_m, cfg.gsd, cfg.images) == (0, 800.0, 0.5, 20000)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs" / "cities"
    demo = SynthCityConfig.from_yaml(root / "demo.yaml")
    bench = SynthCityConfig.from_yaml(root / "bench.yaml")
    assert demo.size_m**2 <= 1.2e6 and demo.images >= 2000
    assert bench.size_m**2 >= 4e6 and bench.images >= 20000
    assert demo.capture.mode == bench.capture.mode == "sequences"  # crowd-sourced, as the benchmark's protocols assume


SEQUENCES = "capture: {{mode: sequences, photos_per_sequence: [15, 40], gps_sigma_m: {sigma}}}\n"


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> dict[float, Path]:
    """The same sequences city with exact GPS and with GPS 3 m off."""
    root = tmp_path_factory.mktemp("captured")
    return {sigma: _synth(root, f"gps{sigma:g}", 5, SEQUENCES.format(sigma=sigma)) for sigma in (0.0, 3.0)}


def _bearing_deg(lon, lat) -> np.ndarray:
    """Compass bearing from each photo to the next (same sequence or not)."""
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True).transform(lon, lat)
    return np.degrees(np.arctan2(np.diff(x), np.diff(y))) % 360, np.hypot(np.diff(x), np.diff(y))


def test_captures_come_in_sequences_along_the_streets(captured):
    meta = CityDir(captured[0.0]).read_metadata()
    assert {"sequence_id", "captured_at"} <= set(meta.columns)
    lengths = meta.groupby("sequence_id", sort=False).size()
    assert len(lengths) >= 3 and lengths.iloc[:-1].between(15, 40).all()  # the last one is cut at IMAGES
    same = meta["sequence_id"].to_numpy()[1:] == meta["sequence_id"].to_numpy()[:-1]
    bearing, step = _bearing_deg(meta["lon"].to_numpy(), meta["lat"].to_numpy())
    assert np.all(step[same] <= 9.0 + 0.01)  # one photo every few metres (car 4–9 m, walker 1–4 m)
    assert np.median(step[same]) > 0.5
    assert np.all(np.diff(meta["captured_at"].to_numpy().astype(np.int64))[same] > 0)  # in time order
    # Mostly facing the way of travel: the camera's heading against the bearing to the next photo.
    moving = same & (step > 0.5)
    off = np.abs((meta["heading_deg"].to_numpy()[:-1][moving] - bearing[moving] + 180) % 360 - 180)
    assert np.median(off) < 25
    assert len(list(CityDir(captured[0.0]).images_dir.glob("*.jpg"))) == IMAGES


def test_a_capture_keeps_its_look_and_captures_differ(captured):
    """Conditions are drawn per sequence: photos of one capture resemble each other more than photos of two."""
    city = CityDir(captured[0.0])
    meta = city.read_metadata()

    def look(image_id: str) -> np.ndarray:  # mean colour and contrast of a photo
        x = np.asarray(Image.open(city.image_path(image_id)), dtype=float)
        return np.concatenate([x.mean(axis=(0, 1)), x.std(axis=(0, 1))])

    looks = {i: look(i) for i in meta["image_id"]}
    groups = [g["image_id"].tolist() for _, g in meta.groupby("sequence_id") if len(g) >= 10]
    within = np.mean([np.linalg.norm(looks[g[0]] - looks[g[5]]) for g in groups])
    across = np.mean([np.linalg.norm(looks[a[0]] - looks[b[5]]) for a, b in zip(groups, groups[1:])])
    assert within < across


def test_gps_is_off_by_a_few_metres_while_the_photos_are_the_same(captured):
    exact, noisy = CityDir(captured[0.0]), CityDir(captured[3.0])
    a, b = exact.read_metadata(), noisy.read_metadata()
    assert (a["image_id"] == b["image_id"]).all() and (a["sequence_id"] == b["sequence_id"]).all()
    first = a["image_id"].iloc[0]
    assert exact.image_path(first).read_bytes() == noisy.image_path(first).read_bytes()  # rendered at the true position
    x0, y0 = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True).transform(a["lon"], a["lat"])
    x1, y1 = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True).transform(b["lon"], b["lat"])
    offsets = np.concatenate([np.asarray(x1) - x0, np.asarray(y1) - y0])
    assert 2.0 < offsets.std() < 4.0  # 3 m per axis


def test_each_capture_casts_its_own_suns_shadows():
    """A capture is taken under one of the capture suns, which lights its façades and casts the shadows on its
    ground and roofs (not the orthophoto's): two captures at other hours share no shadows, as real ones do not."""
    cfg = SynthCityConfig(seed=3, size_m=SIZE_M)
    scene = build_scene(cfg.scene, cfg.size_m, cfg.gsd, cfg.seed)
    capture = CaptureParams(mode="sequences", photos_per_sequence=(5, 10))
    views = sample_sequences(scene, cfg.camera, capture, 80, np.random.default_rng(4)).views
    lights = np.unique(views.light)
    assert len(lights) >= 2
    azimuth = np.radians([CAPTURE_SUNS[i].azimuth_deg for i in views.light])
    assert np.allclose(views.sun_east, np.sin(azimuth), atol=1e-6) and np.allclose(views.sun_north, np.cos(azimuth), atol=1e-6)

    surfaces = capture_surfaces(scene, views, cfg.seed)
    assert sorted(surfaces) == lights.tolist()
    a, b = (int(i) for i in lights[:2])
    only_a = cast_shadows(scene.height, scene.gsd, CAPTURE_SUNS[a]) & ~cast_shadows(scene.height, scene.gsd, CAPTURE_SUNS[b])
    assert only_a.sum() > 100
    assert surfaces[a][only_a].mean() < 0.8 * surfaces[b][only_a].mean()  # darker where only a's sun casts shadows

    renderer = StreetRenderer(scene, surfaces, cfg.camera)
    photo = renderer.render(views, 0, np.random.default_rng(1))
    assert np.array_equal(photo, renderer.render(views, 0, np.random.default_rng(1)))
    elsewhere = dataclasses.replace(views, light=np.where(views.light == a, b, a))
    assert not np.array_equal(photo, renderer.render(elsewhere, 0, np.random.default_rng(1)))


def test_captures_follow_their_streets():
    """Dashcam and phone sequences go along the streets and look along them: photos of two captures at one spot
    share the street's axis (random headings would differ by 45° in the median), and a capture covers its
    streets rather than milling about one spot."""
    cfg = SynthCityConfig(seed=0, size_m=600)
    scene = build_scene(cfg.scene, cfg.size_m, cfg.gsd, cfg.seed)
    captures = sample_sequences(scene, cfg.camera, CaptureParams(mode="sequences"), 600, np.random.default_rng(0))
    views, sequence = captures.views, captures.sequence
    xy = np.column_stack([views.col, views.row]) * cfg.gsd
    near = (np.linalg.norm(xy[:, None] - xy[None], axis=-1) < 5) & (sequence[:, None] != sequence[None, :])
    i, j = np.nonzero(near)
    axis = views.heading_deg % 180
    assert len(i) >= 50 and np.median(np.abs((axis[i] - axis[j] + 90) % 180 - 90)) < 20
    extent = [np.ptp(xy[sequence == s], axis=0).max() for s in np.unique(sequence)]
    assert np.median(extent) > 100
