"""``zoomloc localize``: what a person and a script read, EXIF GPS distances, bad files, maps."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from PIL.ExifTags import GPS, IFD

from zoomloc.cli.main import main
from zoomloc.core.exif import read_gps
from zoomloc.geo.grid import geodesic_m
from zoomloc.models.checkpoint import read_info

TINY_RUN = """
model:
  encoder: {street_size: [64, 128], sat_size: 32, freeze: all}
  policy: {width: 128, layers: 2, heads: 4}
train: {steps: 10, batch_size: 16, lr: 5.0e-4, warmup_steps: 5, val_every: 10, val_queries: 32, log_every: 10, workers: 0}
"""
RECORD_KEYS = {"image", "lat", "lon", "cell_size_m", "probability", "path", "candidates", "error_m", "inside_map", "warnings"}


@pytest.fixture(scope="module")
def run(tiny_city, tmp_path_factory) -> Path:
    """A barely trained model: these tests check the command, not the model's accuracy."""
    tmp = tmp_path_factory.mktemp("localize_run")
    config = tmp / "run.yaml"
    config.write_text(TINY_RUN)
    assert main(["train", str(tiny_city), "--config", str(config), "--out", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def photos(tiny_city) -> list[Path]:
    return sorted((tiny_city / "streetview" / "images").glob("*.jpg"))[:3]


def localize(run: Path, city: Path, *args) -> int:
    return main(["localize", *map(str, args), "--model", str(run), "--city", str(city), "--quiet"])


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def with_gps(src: Path, dst: Path, lon: float, lat: float) -> Path:
    """A copy of ``src`` carrying EXIF GPS as cameras write it: degrees, minutes, seconds and N/E letters."""
    exif = Image.Exif()
    gps = exif.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef], gps[GPS.GPSLatitude] = ("N" if lat >= 0 else "S"), _dms(abs(lat))
    gps[GPS.GPSLongitudeRef], gps[GPS.GPSLongitude] = ("E" if lon >= 0 else "W"), _dms(abs(lon))
    with Image.open(src) as img:
        img.save(dst, exif=exif)
    return dst


def _dms(degrees: float) -> tuple[float, float, float]:
    minutes = (degrees - math.floor(degrees)) * 60
    return float(math.floor(degrees)), float(math.floor(minutes)), (minutes - math.floor(minutes)) * 60


def test_human_output_gives_position_and_probability_per_photo(run, tiny_city, photos, capsys):
    two = photos[:2]
    assert localize(run, tiny_city, *two, "--json") == 0
    expected = records(capsys.readouterr().out)
    assert localize(run, tiny_city, *two) == 0
    out = capsys.readouterr().out
    for photo, rec in zip(two, expected):
        block = out[out.index(str(photo)) :]
        assert f"lat {rec['lat']:.6f}  lon {rec['lon']:.6f}" in block
        assert f"probability {rec['probability']:.3g}" in block
        assert f"{rec['cell_size_m']:.0f} m cell" in block
    assert out.count("alternatives:") == 2  # beam 4: three alternatives to each answer
    assert "EXIF GPS" not in out  # synthetic photos carry no GPS


def test_json_gives_one_consistent_record_per_photo(run, tiny_city, photos, tmp_path, capsys):
    with Image.open(photos[2]) as img:  # a PNG of another size and aspect
        img.resize((300, 40)).save(tmp_path / "wide.png")
    inputs = [*photos[:2], tmp_path / "wide.png"]
    assert localize(run, tiny_city, *inputs, "--json", "--beam", "4", "--topk", "3") == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    recs = records(captured.out)
    assert [r["image"] for r in recs] == [str(p) for p in inputs]
    for rec in recs:
        assert set(rec) == RECORD_KEYS
        assert rec["error_m"] is None
        assert [s["level"] for s in rec["path"]] == [1, 2]
        assert set(rec["path"][0]) == {"level", "cell", "probability"}
        probs = [c["probability"] for c in rec["candidates"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < rec["probability"] == probs[0] <= 1
        assert (rec["lat"], rec["lon"]) == (rec["candidates"][0]["lat"], rec["candidates"][0]["lon"])
        assert rec["probability"] == pytest.approx(np.prod([s["probability"] for s in rec["path"]]), rel=1e-5)


def test_with_photos_the_training_photos_witness_and_their_fit_is_kept_for_later_calls(run, tiny_city, photos, capsys):
    fits = lambda: set((tiny_city / "embeddings").glob("photo_prior_*.json"))  # noqa: E731
    before = fits()
    assert localize(run, tiny_city, *photos[:2], "--json", "--with-photos", "--beam", "3") == 0
    first = records(capsys.readouterr().out)
    (fit,) = fits() - before
    kept = json.loads(fit.read_text())
    split = pd.read_csv(tiny_city / "split.csv")
    assert kept["photos"] == int((split["split"] == "train").sum()) and 0 <= kept["config"]["weight"] <= 1
    for rec in first:  # answers as the map alone gives them: best first, a path whose steps multiply to the answer's probability
        probs = [c["probability"] for c in rec["candidates"]]
        assert probs == sorted(probs, reverse=True) and 0 < rec["probability"] == probs[0] <= 1
        assert rec["probability"] == pytest.approx(np.prod([s["probability"] for s in rec["path"]]), rel=1e-5)
    stamp = fit.stat().st_mtime_ns
    assert localize(run, tiny_city, *photos[:2], "--json", "--with-photos", "--beam", "3") == 0
    assert records(capsys.readouterr().out) == first and fit.stat().st_mtime_ns == stamp  # read back, not fitted again


def test_with_photos_of_a_city_split_anew_is_refused_in_one_line(run, tiny_city, photos, tmp_path, capsys):
    city = tmp_path / "city"
    shutil.copytree(tiny_city, city, ignore=shutil.ignore_patterns("embeddings"))
    split = pd.read_csv(city / "split.csv", dtype={"image_id": str})
    split["split"] = split["split"].iloc[::-1].to_numpy()  # the same photos, split anew: the model's training photos are unknown
    split.to_csv(city / "split.csv", index=False)
    assert localize(run, city, photos[0], "--json", "--with-photos") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and re.fullmatch(r"zoomloc localize: error: the model was trained on another split of .*\n", captured.err)
    assert localize(run, city, photos[0], "--json") == 0  # the map alone still answers


@pytest.mark.realdata
def test_a_photo_taken_off_the_map_is_answered_with_a_warning(run, tiny_city, photos, realdata, tmp_path, capsys):
    """Real photos from Berlin and Lund against the tiny Zürich map: each answer says how far off the map
    its EXIF GPS lies, the JSON says so in fields, and the map draws no error line to the far point.
    A synthetic photo tagged with its own position is on the map and gets no such warning. An answer
    whose first step is below the model's calibrated guess level says that too."""
    berlin, lund = realdata / "streetview" / "berlin" / "berlin_01.jpg", realdata / "streetview" / "lund" / "lund_01.jpg"
    meta = pd.read_csv(tiny_city / "streetview" / "metadata.csv", dtype={"image_id": str}).set_index("image_id")
    here = with_gps(photos[0], tmp_path / "here.jpg", *meta.loc[photos[0].stem, ["lon", "lat"]])
    assert localize(run, tiny_city, berlin, lund, here, "--json") == 0
    recs = {Path(r["image"]).name: r for r in records(capsys.readouterr().out)}
    for name in ("berlin_01.jpg", "lund_01.jpg"):  # 669 and 980 km from Zürich
        rec = recs[name]
        (off_map,) = [w for w in rec["warnings"] if "outside the map" in w]  # (the barely trained model also guesses)
        assert rec["inside_map"] is False
        km = int(re.search(r"lies ([\d,]+) km outside the map", off_map).group(1).replace(",", ""))
        assert 600 < km < 1000 and abs(km - rec["error_m"] / 1000) < 2  # the map is 400 m wide: as far as the answer
        guessing = rec["path"][0]["probability"] < read_info(run)["val"]["guess_factor"] / 16
        assert any("no surer than a guess" in w for w in rec["warnings"]) == guessing
    assert recs["here.jpg"]["inside_map"] is True and not any("outside the map" in w for w in recs["here.jpg"]["warnings"])

    assert localize(run, tiny_city, berlin, "--map", tmp_path / "map.html") == 0
    out = capsys.readouterr().out
    assert out.count("warning: its GPS position lies") == 1
    html = (tmp_path / "map.html").read_text()
    assert "L.polyline" not in html and "outside the map" in html


def test_topk_defaults_to_the_beam_and_widens_it(run, tiny_city, photos, capsys):
    """The candidates are the best paths of the beam: as many as --beam by default, and a --topk
    above it widens the search rather than being cut to the beam."""
    assert localize(run, tiny_city, photos[0], "--json", "--beam", "3") == 0
    assert len(records(capsys.readouterr().out)[0]["candidates"]) == 3
    assert localize(run, tiny_city, photos[0], "--json", "--beam", "2", "--topk", "6") == 0
    narrow = records(capsys.readouterr().out)[0]["candidates"]
    assert localize(run, tiny_city, photos[0], "--json", "--beam", "6", "--topk", "6") == 0
    assert narrow == records(capsys.readouterr().out)[0]["candidates"] and len(narrow) == 6


def test_exif_gps_sets_the_distance_to_the_prediction(run, tiny_city, photos, tmp_path, capsys):
    meta = pd.read_csv(tiny_city / "streetview" / "metadata.csv", dtype={"image_id": str}).set_index("image_id")
    true_lon, true_lat = meta.loc[photos[0].stem, ["lon", "lat"]]
    tagged = with_gps(photos[0], tmp_path / "tagged.jpg", true_lon, true_lat)
    with Image.open(tagged) as img:
        fix = read_gps(img)
    assert (fix.lon, fix.lat) == pytest.approx((true_lon, true_lat), abs=1e-7)

    assert localize(run, tiny_city, tagged, photos[1], "--json") == 0
    tagged_rec, untagged_rec = records(capsys.readouterr().out)
    expected = float(geodesic_m(tagged_rec["lon"], tagged_rec["lat"], fix.lon, fix.lat))
    assert tagged_rec["error_m"] == pytest.approx(expected, rel=1e-6)
    assert tagged_rec["error_m"] < 600  # both inside the 400 m city
    assert untagged_rec["error_m"] is None

    assert localize(run, tiny_city, tagged) == 0
    assert f"distance to EXIF GPS: {expected:,.0f} m" in capsys.readouterr().out


def _bad_photos(folder: Path, good: Path) -> list[Path]:
    """A truncated JPEG, an empty one, a text file and a missing file."""
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(good.read_bytes()[:300] + b"\x00" * 50)
    empty = folder / "empty.jpg"
    empty.touch()
    text = folder / "notes.txt"
    text.write_text("not a photo\n")
    return [corrupt, empty, text, folder / "missing.jpg"]


def test_unreadable_photos_are_reported_and_the_others_localized(run, tiny_city, photos, tmp_path, capsys):
    bad = _bad_photos(tmp_path, photos[0])
    inputs = [bad[0], photos[0], bad[1], bad[2], photos[1], bad[3]]
    assert localize(run, tiny_city, *inputs, "--json") == 0
    captured = capsys.readouterr()
    assert [r["image"] for r in records(captured.out)] == [str(photos[0]), str(photos[1])]
    errors = captured.err.splitlines()
    assert len(errors) == len(bad)
    for path, line in zip(bad, errors):
        assert str(path) in line and line.startswith("zoomloc localize: ")


def test_only_unreadable_photos_exit_2(run, tiny_city, photos, tmp_path, capsys):
    bad = _bad_photos(tmp_path, photos[0])
    assert localize(run, tiny_city, *bad) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == len(bad) + 1
    assert "none of the 4 photos could be read" in captured.err


def test_bad_beam_is_a_user_error(run, tiny_city, photos, capsys):
    assert localize(run, tiny_city, photos[0], "--beam", "0") == 2
    assert "--beam" in capsys.readouterr().err


def test_map_shows_every_localized_photo(run, tiny_city, photos, tmp_path, capsys):
    out = tmp_path / "map.html"
    assert localize(run, tiny_city, *photos[:2], "--map", out) == 0
    assert f"map: {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "<html" in page.lower()
    for photo in photos[:2]:
        assert photo.name in page


def test_real_phone_photo_far_from_the_city(run, tiny_city, realdata, tmp_path, capsys):
    """A 3264×2448 iPhone JPEG with EXIF orientation, GPS in Berlin: localized, error ~650 km."""
    photo = Path(shutil.copy(realdata / "streetview" / "berlin" / "berlin_01.jpg", tmp_path))
    assert localize(run, tiny_city, photo, "--json") == 0
    (rec,) = records(capsys.readouterr().out)
    assert rec["error_m"] > 100_000
    assert abs(rec["lat"] - 47.3769) < 0.01 and abs(rec["lon"] - 8.5417) < 0.01  # inside the Zürich city


def test_help_lists_the_commands_in_the_order_a_city_goes_through_them(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    order = ["synth-city", "import-photos", "split", "build-pyramid", "train", "embed", "evaluate", "localize", "benchmark", "demo"]
    positions = [out.index(f"\n    {name}") for name in order]
    assert positions == sorted(positions) and "'zoomloc demo'" in out


def test_a_query_loads_no_trainer_renderer_or_map_library(run, tiny_city, photos):
    """`zoomloc localize --json` in a fresh process: the modules a query needs, not the pipelines'."""
    script = (
        "import sys; from zoomloc.cli.main import main; "
        f"code = main(['localize', {str(photos[0])!r}, '--model', {str(run)!r}, '--city', {str(tiny_city)!r}, '--json', '--quiet']); "
        "heavy = ('geopandas', 'matplotlib', 'folium', 'data_prep', 'zoomloc.training', 'zoomloc.evaluation', 'zoomloc.pipelines', "
        "'zoomloc.cli.data', 'zoomloc.cli.pipelines', 'zoomloc.inference.viz'); "
        "print(code, sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stderr.strip().splitlines()[-1] == "0 []"


def test_a_query_decodes_each_photo_once_and_opens_the_pyramid_once(run, tiny_city, photos, tmp_path, monkeypatch):
    """Reading a photo's pixels and its GPS, embedding it and drawing its thumbnail share one decoding;
    checking the model's grid, reading the view cache and drawing the map share one pyramid file."""
    opened, files = Counter(), Counter()
    real_open, real_file = Image.open, h5py.File

    def counting_open(fp, *args, **kwargs):
        opened[str(fp)] += 1
        return real_open(fp, *args, **kwargs)

    def counting_file(name, *args, **kwargs):
        files[str(name)] += 1
        return real_file(name, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(h5py, "File", counting_file)
    queried = photos[:3]
    args = ["localize", *map(str, queried), "--model", str(run), "--city", str(tiny_city), "--map", str(tmp_path / "m.html"), "--quiet"]
    assert main(args) == 0
    assert [opened[str(p)] for p in queried] == [1, 1, 1]
    assert files[str(tiny_city / "pyramid.h5")] == 1
