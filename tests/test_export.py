"""GeoJSON and CSV of localizations and tracks: what GIS tools read back is what was localized.

A capture of three photos (one answered by its second candidate, one judged an outlier) and a
photo alone, with a name that CSV must quote; read back with geopandas (pyogrio) and pandas.
"""

from __future__ import annotations

import json
import os

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from zoomloc.core.errors import ZoomlocError
from zoomloc.geo.grid import geodesic_m
from zoomloc.inference.export import CSV_COLUMNS, feature_collection, photo_rows, write_csv, write_geojson
from zoomloc.inference.localization import Candidate, Localization, Step, Track, TrackPoint

LON, LAT = 8.54, 47.37
ODD = 'Zürich, "Bahnhofstrasse"; IMG_9.jpg'  # a comma, quotes and a semicolon: CSV must quote it


def _loc(image: str, dlon: float, truth: tuple[float, float] | None = None, warnings: tuple[str, ...] = ()) -> Localization:
    """A made-up answer ``dlon`` degrees east of (LON, LAT), with a second candidate 0.001° east of it."""
    lon = LON + dlon
    candidates = (Candidate(lon, LAT, 0.5, (1, 2)), Candidate(lon + 0.001, LAT, 0.25, (1, 3)))
    steps = (Step(1, 1, 0.9), Step(2, 6, 0.5))
    truth_lon, truth_lat = truth or (None, None)
    return Localization(image, lon, LAT, 38.5, 0.5, steps, candidates, truth_lon, truth_lat, True if truth else None, warnings)


@pytest.fixture
def track() -> Track:
    truths = [(LON + d, LAT + 0.0001) for d in (0.0, 0.0015, 0.003)]
    photos = tuple(_loc(f"frame_{i}.jpg", d, truths[i]) for i, d in enumerate((0.0, 0.0005, 0.01)))
    points = (
        TrackPoint(photos[0].image, photos[0].lon, photos[0].lat, 0.9, 0, 0.0),
        TrackPoint(photos[1].image, photos[1].candidates[1].lon, LAT, 0.7, 1, 1.5),  # the photo's second candidate
        TrackPoint(photos[2].image, LON + 0.0029, LAT, 0.6, None, 3.0),  # an outlier frame, placed between its neighbours
    )
    return Track("sequence-A", photos, points, fusion_s=0.01)


@pytest.fixture
def lone() -> Localization:
    return _loc(ODD, -0.002, warnings=("no surer than a guess", "second, with; punctuation"))


def _fused_errors(track: Track) -> list[float]:
    return [float(geodesic_m(q.lon, q.lat, p.true_lon, p.true_lat)) for p, q in zip(track.photos, track.points)]


# ------------------------------------------------------------------------------ GeoJSON
def test_geojson_reads_back_as_epsg4326_points_and_one_line(tmp_path, track, lone):
    path = tmp_path / "out.geojson"
    write_geojson(path, [lone, *track.photos], [track])
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["type"] == "FeatureCollection" and "crs" not in raw  # RFC 7946: WGS84 lon/lat, said by no member
    gdf = gpd.read_file(path)
    assert gdf.crs.to_epsg() == 4326
    points, lines = gdf[gdf["kind"] == "photo"], gdf[gdf["kind"] == "track"]
    assert list(points.geom_type) == ["Point"] * 4 and list(lines.geom_type) == ["LineString"]

    assert list(points["image"]) == [ODD, "frame_0.jpg", "frame_1.jpg", "frame_2.jpg"]
    want = [(lone.lon, lone.lat)] + [(q.lon, q.lat) for q in track.points]  # fused, for a track's photos
    np.testing.assert_allclose(np.column_stack([points.geometry.x, points.geometry.y]), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(lines.geometry.iloc[0].coords), [(q.lon, q.lat) for q in track.points], rtol=0, atol=1e-12)
    assert lines["capture"].tolist() == ["sequence-A"] and lines["photos"].tolist() == [3]

    fused = points.iloc[1:]
    assert points["fused"].astype(bool).tolist() == [False, True, True, True]
    assert points["outlier"].astype(bool).tolist() == [False, False, False, True]
    assert fused["capture"].tolist() == ["sequence-A"] * 3 and pd.isna(points["capture"].iloc[0])
    assert fused["time_s"].tolist() == [0.0, 1.5, 3.0] and pd.isna(points["time_s"].iloc[0])
    assert fused["probability"].tolist() == [0.9, 0.7, 0.6] and points["probability"].iloc[0] == 0.5
    assert fused["candidate"].iloc[:2].tolist() == [0, 1] and points["candidate"].isna().tolist() == [True, False, False, True]
    assert fused["photo_lon"].tolist() == [p.lon for p in track.photos] and fused["photo_probability"].tolist() == [0.5] * 3
    np.testing.assert_allclose(fused["error_m"], _fused_errors(track), rtol=1e-9)
    np.testing.assert_allclose(fused["photo_error_m"], [p.error_m for p in track.photos], rtol=1e-9)
    assert points[["error_m", "photo_error_m"]].iloc[0].isna().all()  # no truth for the lone photo
    assert points["warnings"].iloc[0] == "no surer than a guess; second, with; punctuation" and fused["warnings"].tolist() == [""] * 3
    assert points["cell_size_m"].tolist() == [38.5] * 4
    assert json.loads(points["candidates"].iloc[0]) == [[c.lat, c.lon, c.probability] for c in lone.candidates]
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]  # written atomically, nothing left over


def test_feature_collection_holds_plain_json_values(track):
    """numpy scalars in a localization come out as Python floats: ``json.dumps`` of the dict needs no help."""
    photo = track.photos[0]
    numpy_photo = Localization(photo.image, np.float64(photo.lon), np.float32(photo.lat), np.float64(38.5), np.float32(0.5), (), ())
    collection = feature_collection([numpy_photo], [track])

    def walk(value):
        if isinstance(value, dict):
            return [v for item in value.values() for v in walk(item)]
        if isinstance(value, list | tuple):
            return [v for item in value for v in walk(item)]
        return [value]

    assert {type(v) for v in walk(collection)} <= {str, float, int, bool, type(None)}
    assert json.loads(json.dumps(collection, allow_nan=False)) == collection  # lists, not tuples: what a reader gets
    point = collection["features"][0]
    assert point["geometry"] == {"type": "Point", "coordinates": [photo.lon, float(np.float32(photo.lat))]}
    assert point["properties"]["candidates"] == "[]" and point["properties"]["kind"] == "photo"


def test_a_tracks_photos_are_written_once_whether_listed_or_not(track, lone):
    listed = feature_collection([lone, *track.photos], [track])
    unlisted = feature_collection([lone], [track])
    assert listed == unlisted
    assert [row["image"] for row in photo_rows([], [track])] == ["frame_0.jpg", "frame_1.jpg", "frame_2.jpg"]


def test_a_track_of_one_photo_gets_a_fused_point_and_no_line(track):
    single = Track("solo", track.photos[1:2], track.points[1:2], 0.0)
    features = feature_collection(single.photos, [single])["features"]
    assert [f["geometry"]["type"] for f in features] == ["Point"]
    assert features[0]["properties"]["fused"] is True and features[0]["geometry"]["coordinates"] == [track.points[1].lon, LAT]


# ------------------------------------------------------------------------------ CSV
def test_csv_reads_back_one_row_per_photo(tmp_path, track, lone):
    path = tmp_path / "out.csv"
    write_csv(path, [lone, *track.photos], [track])
    df = pd.read_csv(path)
    assert tuple(df.columns) == CSV_COLUMNS
    assert df["image"].tolist() == [ODD, "frame_0.jpg", "frame_1.jpg", "frame_2.jpg"]
    assert df["fused"].tolist() == [False, True, True, True] and df["outlier"].tolist() == [False, False, False, True]
    np.testing.assert_allclose(df[["lon", "lat"]], [(lone.lon, lone.lat)] + [(q.lon, q.lat) for q in track.points], rtol=0, atol=1e-12)
    np.testing.assert_allclose(df[["photo_lon", "photo_lat"]], [(p.lon, p.lat) for p in (lone, *track.photos)], rtol=0, atol=1e-12)
    assert df["probability"].tolist() == [0.5, 0.9, 0.7, 0.6] and df["photo_probability"].tolist() == [0.5] * 4
    assert df["time_s"].iloc[1:].tolist() == [0.0, 1.5, 3.0] and pd.isna(df["time_s"].iloc[0])
    assert df["capture"].iloc[1:].tolist() == ["sequence-A"] * 3 and pd.isna(df["capture"].iloc[0])
    np.testing.assert_allclose(df["error_m"].iloc[1:], _fused_errors(track), rtol=1e-9)
    np.testing.assert_allclose(df["photo_error_m"].iloc[1:], [p.error_m for p in track.photos], rtol=1e-9)
    assert df[["error_m", "photo_error_m"]].iloc[0].isna().all()
    assert df["warnings"].iloc[0] == "no surer than a guess; second, with; punctuation" and df["warnings"].iloc[1:].isna().all()
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# ------------------------------------------------------------------------------ photos alone
def test_single_photos_without_tracks(tmp_path, lone):
    other = _loc("b.jpg", 0.001, truth=(LON + 0.0012, LAT))
    write_geojson(tmp_path / "out.geojson", [lone, other])
    write_csv(tmp_path / "out.csv", [lone, other])
    gdf = gpd.read_file(tmp_path / "out.geojson")
    assert gdf.crs.to_epsg() == 4326 and list(gdf.geom_type) == ["Point", "Point"]
    np.testing.assert_allclose(np.column_stack([gdf.geometry.x, gdf.geometry.y]), [(lone.lon, LAT), (other.lon, LAT)], rtol=0, atol=1e-12)
    assert gdf["fused"].astype(bool).tolist() == [False, False] and gdf["capture"].isna().all()
    df = pd.read_csv(tmp_path / "out.csv")
    assert df["image"].tolist() == [ODD, "b.jpg"] and df["fused"].tolist() == [False, False]
    assert (df["lat"] == df["photo_lat"]).all() and (df["lon"] == df["photo_lon"]).all()
    assert (df["probability"] == df["photo_probability"]).all()
    assert df["error_m"].iloc[1] == pytest.approx(other.error_m) and df["error_m"].iloc[1] == df["photo_error_m"].iloc[1]


def test_no_photo_at_all_writes_empty_files(tmp_path):
    write_geojson(tmp_path / "out.geojson", [])
    write_csv(tmp_path / "out.csv", [])
    assert json.loads((tmp_path / "out.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    assert (tmp_path / "out.csv").read_text() == ",".join(CSV_COLUMNS) + "\n"


# ------------------------------------------------------------------------------ where it cannot be written
WRITERS = pytest.mark.parametrize("write", [write_geojson, write_csv], ids=["geojson", "csv"])


@WRITERS
def test_a_missing_folder_is_created(tmp_path, write, lone):
    """As every output of zoomloc (:func:`zoomloc.core.atomic.atomic_path` makes the folders)."""
    path = tmp_path / "new" / "deeper" / "out.file"
    write(path, [lone])
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["out.file"]


@WRITERS
def test_a_folder_that_is_a_file_is_one_line_and_leaves_nothing(tmp_path, write, lone):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    path = blocker / "out.file"
    with pytest.raises(ZoomlocError) as error:
        write(path, [lone])
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: cannot write the ") and str(blocker) in message.split(": ", 1)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and blocker.read_text() == "not a folder"


@WRITERS
def test_a_path_that_is_a_folder_is_one_line_and_leaves_nothing(tmp_path, write, lone):
    path = tmp_path / "out"
    path.mkdir()
    with pytest.raises(ZoomlocError, match="Is a directory") as error:
        write(path, [lone])
    assert "\n" not in str(error.value) and str(error.value).startswith(f"{path}: ")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and list(path.iterdir()) == []  # no temporary left beside it


@WRITERS
@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_one_line_and_leaves_nothing(tmp_path, write, lone):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ZoomlocError, match="Permission denied") as error:
            write(folder / "out.file", [lone])
        assert "\n" not in str(error.value)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
