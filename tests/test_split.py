"""``zoomloc split`` on a generated city: photos along random roads over 1.5 km of Lund."""

from __future__ import annotations

import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from pyproj import Transformer

from data_prep.split import SplitConfig, split_city
from zoomloc.cli.main import main
from zoomloc.core.errors import InputError
from zoomloc.geo.grid import geodesic_m

ORIGIN = (385_000.0, 6_172_000.0)  # UTM 33N, central Lund
SIDE_M = 1500.0


def write_city(root: Path, n: int = 3000, roads: int = 6, seed: int = 7) -> Path:
    """A city whose metadata.csv holds ``n`` photos along ``roads`` random polylines."""
    rng = np.random.default_rng(seed)
    lines = [shapely.LineString(ORIGIN + rng.uniform(0, SIDE_M, (rng.integers(3, 7), 2))) for _ in range(roads)]
    which = rng.integers(0, roads, n)
    along = rng.uniform(0, 1, n)
    pts = shapely.line_interpolate_point(np.array(lines, dtype=object)[which], along, normalized=True)
    x = shapely.get_x(pts) + rng.normal(0, 3, n)
    y = shapely.get_y(pts) + rng.normal(0, 3, n)
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
    meta = pd.DataFrame({"image_id": [f"img{i:05d}" for i in range(n)], "lon": lon, "lat": lat, "heading_deg": rng.uniform(0, 360, n)})
    (root / "streetview").mkdir(parents=True)
    meta.to_csv(root / "streetview" / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    return write_city(tmp_path_factory.mktemp("city"))


def fresh_copy(city: Path, tmp_path: Path, name: str = "c") -> Path:
    dst = tmp_path / name
    shutil.copytree(city / "streetview", dst / "streetview")
    return dst


def joined(city: Path) -> pd.DataFrame:
    meta = pd.read_csv(city / "streetview" / "metadata.csv", dtype={"image_id": str})
    split = pd.read_csv(city / "split.csv", dtype={"image_id": str})
    return split.merge(meta, on="image_id", validate="one_to_one")


def min_geodesic_m(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Smallest ellipsoidal distance between any photo of ``a`` and any of ``b`` (brute force)."""
    return float(geodesic_m(a.lon.to_numpy()[:, None], a.lat.to_numpy()[:, None], b.lon.to_numpy()[None], b.lat.to_numpy()[None]).min())


def test_splits_are_buffer_apart(city, tmp_path, capsys):
    c = fresh_copy(city, tmp_path)

    code = main(["split", str(c), "--block-m", "200", "--buffer-m", "50", "--seed", "0"])

    out = capsys.readouterr().out
    assert code == 0
    df = joined(c)
    by = {s: df[df.split == s] for s in ("train", "val", "test")}
    shares = {s: len(part) / len(df) for s, part in by.items()}
    assert shares == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1}, abs=0.05)
    assert min_geodesic_m(by["test"], by["train"]) >= 50
    assert min_geodesic_m(by["val"], by["train"]) >= 50
    assert min_geodesic_m(by["val"], by["test"]) >= 50
    meta_order = pd.read_csv(c / "streetview" / "metadata.csv", dtype={"image_id": str}).image_id
    assert list(df.image_id) == [i for i in meta_order if i in set(df.image_id)]
    dropped = 3000 - len(df)
    assert dropped > 0 and "dropped near another split" in out and "train" in out


def test_areas_geojson_holds_each_split_and_its_photos(city, tmp_path):
    c = fresh_copy(city, tmp_path)
    split_city(c, SplitConfig())

    areas = gpd.read_file(c / "split_areas.geojson")

    assert areas.crs.to_epsg() == 4326
    assert list(areas["split"]) == ["train", "val", "test"]
    df = joined(c)
    geoms = areas.set_index("split").geometry
    for name, part in df.groupby("split"):
        assert geoms[name].covers(shapely.points(part.lon, part.lat)).all()
        assert areas.set_index("split").loc[name, "images"] == len(part)
    assert geoms["train"].intersection(geoms["test"]).area < 1e-12
    # Each photo keeps the buffer from the *areas* of the other splits, not only from their
    # photos (UTM 33N distances here are 0.02 % short of geodesic ones; 5 cm of slack).
    utm = areas.to_crs("EPSG:32633").set_index("split").geometry
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    for name, part in df.groupby("split"):
        others = shapely.union_all(utm.drop(name).values)
        nearest = float(shapely.distance(shapely.points(*to_utm.transform(part.lon, part.lat)), others).min())
        assert nearest >= 50 - 0.05, (name, nearest)


def test_same_seed_same_bytes_other_seed_differs(city, tmp_path):
    a, b, other = (fresh_copy(city, tmp_path, n) for n in ("a", "b", "other"))
    for root, seed in ((a, 3), (b, 3), (other, 4)):
        split_city(root, SplitConfig(seed=seed))

    for name in ("split.csv", "split_areas.geojson"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "split.csv").read_bytes() != (other / "split.csv").read_bytes()


def test_fractions_are_close_to_requested(city, tmp_path):
    c = fresh_copy(city, tmp_path)

    summary = split_city(c, SplitConfig(block_m=100, buffer_m=0, fractions=(0.7, 0.1, 0.2)))

    counts = joined(c).split.value_counts(normalize=True)
    assert counts["train"] == pytest.approx(0.7, abs=0.03)
    assert counts["val"] == pytest.approx(0.1, abs=0.03)
    assert counts["test"] == pytest.approx(0.2, abs=0.03)
    assert summary.images == joined(c).split.value_counts().to_dict()


def test_val_fraction_zero_leaves_two_splits(city, tmp_path):
    c = fresh_copy(city, tmp_path)

    summary = split_city(c, SplitConfig(fractions=(0.9, 0.0, 0.1)))

    assert summary.images["val"] == 0
    assert set(joined(c).split) == {"train", "test"}
    assert list(gpd.read_file(c / "split_areas.geojson")["split"]) == ["train", "test"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--block-m", "5000"],
            "metadata.csv: split leaves no train images (1 block(s) of 5000 m for 3000 photos); use a smaller --block-m",
        ),
        (["--buffer-m", "3000"], "metadata.csv: split leaves no train images (all"),
        (["--fractions", "0.5", "0.1", "0.1"], "--fractions must be 3 non-negative numbers summing to 1, not 0.5 0.1 0.1"),
        (["--fractions", "0.9", "0.1", "0"], "--fractions must give train and test a share above 0"),
        (["--fractions", "1.2", "-0.1", "-0.1"], "--fractions must be 3 non-negative numbers"),
        (["--block-m", "0"], "--block-m) must be a positive number"),
    ],
)
def test_errors_exit_2_without_writing(city, tmp_path, capsys, args, message):
    c = fresh_copy(city, tmp_path)

    code = main(["split", str(c), *args])

    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert message in err
    assert not (c / "split.csv").exists() and not (c / "split_areas.geojson").exists()


def test_missing_or_empty_metadata(tmp_path, capsys):
    assert main(["split", str(tmp_path)]) == 2
    assert f"{tmp_path / 'streetview' / 'metadata.csv'}: no such file" in capsys.readouterr().err
    (tmp_path / "streetview").mkdir()
    (tmp_path / "streetview" / "metadata.csv").write_text("image_id,lon,lat\n")
    with pytest.raises(InputError, match="holds no photo"):
        split_city(tmp_path, SplitConfig())


def test_synthetic_city_splits_buffer_apart(tiny_city, tmp_path):
    """The same guarantee on photos placed by the synthetic city generator (along its roads)."""
    c = fresh_copy(tiny_city, tmp_path)
    assert main(["split", str(c), "--block-m", "60", "--buffer-m", "20", "--seed", "3"]) == 0
    df = joined(c)
    by = {s: df[df.split == s] for s in ("train", "val", "test")}
    assert all(len(part) > 0 for part in by.values())
    assert min_geodesic_m(by["test"], by["train"]) >= 20
    assert min_geodesic_m(by["val"], by["train"]) >= 20


def _with_sequences(city: Path, tmp_path: Path) -> Path:
    """A copy of ``city`` whose photos belong to 297 captures of 10 photos each, and 30 photos without one."""
    dst = fresh_copy(city, tmp_path, "seq")
    meta = pd.read_csv(dst / "streetview" / "metadata.csv", dtype={"image_id": str})
    seq = [f"s{i // 10:03d}" for i in range(len(meta))]
    meta["sequence_id"] = seq[: len(meta) - 30] + [""] * 30
    meta.to_csv(dst / "streetview" / "metadata.csv", index=False)
    return dst


def test_split_by_photo_draws_photos_at_random(city, tmp_path, capsys):
    dst = fresh_copy(city, tmp_path)
    assert main(["split", str(dst), "--by", "photo", "--fractions", "0.8", "0.1", "0.1"]) == 0
    assert "by photo" in capsys.readouterr().out
    df = joined(dst)
    assert len(df) == 3000  # nothing dropped
    shares = df["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.005 and abs(shares["test"] - 0.1) < 0.005
    # Same area: test photos lie among training photos (a metre or two from one, on these roads).
    assert np.median(
        geodesic_m(*(df.loc[df.split == "test", c].to_numpy()[:, None] for c in ("lon", "lat")),
                   *(df.loc[df.split == "train", c].to_numpy()[None] for c in ("lon", "lat"))).min(axis=1)
    ) < 10  # fmt: skip
    areas = gpd.read_file(dst / "split_areas.geojson")
    assert sorted(areas["split"]) == ["test", "train", "val"]
    assert dict(zip(areas["split"], areas["images"])) == df["split"].value_counts().to_dict()


def test_split_by_sequence_keeps_captures_whole(city, tmp_path, capsys):
    dst = _with_sequences(city, tmp_path)
    assert main(["split", str(dst), "--by", "sequence", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "by sequence" in out and "sequences" in out
    df = joined(dst)
    assert len(df) == 3000
    named = df[df["sequence_id"].notna()]
    assert (named.groupby("sequence_id")["split"].nunique() == 1).all()  # a capture never straddles splits
    assert set(named["split"]) == {"train", "val", "test"} and named["sequence_id"].nunique() == 297
    shares = df["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.1) < 0.02
    loose = df[df["sequence_id"].isna()]
    assert len(loose) == 30 and loose["split"].nunique() > 1  # each photo without a sequence is its own
    again = tmp_path / "again"
    shutil.copytree(dst / "streetview", again / "streetview")
    assert main(["split", str(again), "--by", "sequence", "--seed", "3"]) == 0
    assert (again / "split.csv").read_bytes() == (dst / "split.csv").read_bytes()


def test_the_protocol_is_recorded_and_checked(city, tmp_path):
    from data_prep.split import config_mismatch

    dst = fresh_copy(city, tmp_path)
    split_city(dst, SplitConfig(by="photo"))
    assert config_mismatch(dst, SplitConfig(by="photo")) is None
    assert "by photo (the config's: sequence)" in config_mismatch(dst, SplitConfig(by="sequence"))
    with pytest.raises(InputError, match="--by must be one of"):
        SplitConfig(by="street")


def test_too_few_sequences_are_refused(city, tmp_path, capsys):
    dst = fresh_copy(city, tmp_path)
    meta = pd.read_csv(dst / "streetview" / "metadata.csv", dtype={"image_id": str})
    meta["sequence_id"] = "one"
    meta.to_csv(dst / "streetview" / "metadata.csv", index=False)
    assert main(["split", str(dst), "--by", "sequence"]) == 2
    err = capsys.readouterr().err.strip()
    assert "1 sequences for 3000 photos" in err and "\n" not in err and not (dst / "split.csv").exists()
