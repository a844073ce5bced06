"""``zoomloc localize --track``: captures formed from records or EXIF times, fused, written as GIS files.

The model is barely trained (these tests check the command; tests/test_fusion.py checks what
fusion does with a model's candidates); the photos come from the tiny city, with times and
sequences given by a records file as a Mapillary export would.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from zoomloc.cli.main import main

T0_MS = 1_780_000_000_000


@pytest.fixture(scope="module")
def frames(tiny_city) -> list[Path]:
    return sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[:6]


@pytest.fixture(scope="module")
def records(frames, tmp_path_factory) -> Path:
    """Two captures, interleaved in file order, each photo 2 s after the previous one of its capture,
    given in reverse time order: the command must sort them."""
    path = tmp_path_factory.mktemp("records") / "records.csv"
    rows = [
        {"id": f.stem, "sequence": "ab"[i % 2], "captured_at": T0_MS + 2000 * (i // 2), "lon": 0.0, "lat": 0.0}
        for i, f in enumerate(frames)
    ]
    pd.DataFrame(rows[::-1]).to_csv(path, index=False)
    return path


def localize(short_run: Path, city: Path, *args) -> int:
    return main(["localize", *map(str, args), "--model", str(short_run), "--city", str(city), "--quiet"])


def test_captures_are_split_by_sequence_and_ordered_by_time(short_run, tiny_city, frames, records, capsys):
    assert localize(short_run, tiny_city, *frames, "--track", "--records", records, "--json") == 0
    tracks = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [t["capture"] for t in tracks] == ["a", "b"]
    for track, first in zip(tracks, (0, 1)):
        assert [p["image"] for p in track["photos"]] == [str(f) for f in frames[first::2]]
        assert [p["time_s"] for p in track["photos"]] == [0.0, 2.0, 4.0]
        for photo in track["photos"]:
            assert len(photo["candidates"]) == 32  # the fusion's default
            fused = photo["fused"]
            if fused["candidate"] is not None:
                chosen = photo["candidates"][fused["candidate"]]
                assert (fused["lat"], fused["lon"]) == pytest.approx((chosen["lat"], chosen["lon"]), abs=1e-9)
            assert 0 <= fused["probability"] <= 1


def test_a_track_is_written_as_geojson_csv_and_map(short_run, tiny_city, frames, records, tmp_path, capsys):
    geojson, table, page = tmp_path / "out.geojson", tmp_path / "out.csv", tmp_path / "map.html"
    args = ("--track", "--records", records, "--geojson", geojson, "--csv", table, "--map", page)
    assert localize(short_run, tiny_city, *frames, *args) == 0
    out = capsys.readouterr().out
    assert out.count("fused as one track") == 2 and f"GeoJSON: {geojson}" in out
    gdf = gpd.read_file(geojson)
    assert gdf.crs.to_epsg() == 4326
    points, lines = gdf[gdf.geom_type == "Point"], gdf[gdf.geom_type == "LineString"]
    assert len(points) == len(frames) and len(lines) == 2
    csv = pd.read_csv(table)
    assert len(csv) == len(frames) and csv["fused"].all()
    by_image = csv.set_index("image")
    for line in lines.itertuples():  # each line passes through its capture's fused points, in time order
        mine = points[points["capture"] == line.capture].sort_values("time_s")
        assert [(round(x, 9), round(y, 9)) for x, y in line.geometry.coords] == [(round(p.x, 9), round(p.y, 9)) for p in mine.geometry]
        assert list(by_image.loc[mine["image"], "lat"]) == pytest.approx([p.y for p in mine.geometry])
    assert "fused track" in page.read_text()


def test_a_folder_of_one_capture_is_ordered_by_interval_without_times(short_run, tiny_city, frames, tmp_path, capsys):
    folder = tmp_path / "drive"
    folder.mkdir()
    for f in frames[:4]:
        (folder / f.name).write_bytes(f.read_bytes())
    assert localize(short_run, tiny_city, folder, "--track", "--interval", "1.5", "--json") == 0
    (track,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["time_s"] for p in track["photos"]] == [0.0, 1.5, 3.0, 4.5]
    assert [Path(p["image"]).name for p in track["photos"]] == [f.name for f in frames[:4]]


def test_single_photos_get_geojson_too(short_run, tiny_city, frames, tmp_path, capsys):
    geojson = tmp_path / "photos.geojson"
    assert localize(short_run, tiny_city, *frames[:2], "--geojson", geojson) == 0
    gdf = gpd.read_file(geojson)
    assert gdf.crs.to_epsg() == 4326 and list(gdf.geom_type) == ["Point", "Point"] and not gdf["fused"].any()


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty folder", "no photos"),
        ("untimed, no interval", "--interval"),
        ("interval 0", "--interval must be a positive"),
        ("interval without track", "only apply with --track"),
        ("unparseable time", "captured_at"),
    ],
)
def test_bad_capture_input_is_one_line_and_exit_2(short_run, tiny_city, frames, tmp_path, capsys, case, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,captured_at,sequence_id\n" + "".join(f"{f.stem},yesterday-ish,a\n" for f in frames))
    args = {
        "empty folder": (empty, "--track", "--interval", "1"),
        "untimed, no interval": (*frames, "--track"),
        "interval 0": (*frames, "--track", "--interval", "0"),
        "interval without track": (*frames, "--interval", "2"),
        "unparseable time": (*frames, "--track", "--records", bad),
    }[case]
    capsys.readouterr()
    assert localize(short_run, tiny_city, *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_real_mapillary_walk_is_one_capture_in_time_order(short_run, tiny_city, realdata, capsys):
    """lund/: the Mapillary app's own record (time, sequence) orders the walk; the photos lie off this map,
    and each says so, in the text too."""
    folder = realdata / "streetview" / "lund"
    assert localize(short_run, tiny_city, folder, "--track", "--json") == 0
    (track,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(p["image"]).name for p in track["photos"]] == sorted(p.name for p in folder.glob("*.jpg"))  # named in time order
    times = [p["time_s"] for p in track["photos"]]
    assert times[0] == 0 and all(b > a for a, b in zip(times, times[1:])) and 60 < times[-1] < 600
    assert all(p["inside_map"] is False and "outside the map" in p["warnings"][0] for p in track["photos"])
    assert localize(short_run, tiny_city, folder, "--track") == 0
    assert capsys.readouterr().out.count("warning: its GPS position lies") == 29
