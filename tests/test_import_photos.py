"""``zoomloc import-photos`` on real GPS-tagged photos, broken files and Mapillary-style records."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from PIL import Image, TiffImagePlugin
from pyproj import Transformer
from rasterio.transform import Affine

from data_prep.photos import import_photos, safe_id
from zoomloc.cli.main import main

BAD = [
    "tests_unit_data_corrupt_exif_large_thumbnail.jpg",
    "tests_unit_data_corrupt_exif_trusted_wrong_type.jpg",
    "tests_unit_data_corrupt_exif_wrong_type.jpg",
    "tests_unit_data_empty_exif.jpg",
]
READABLE_BAD = ["tests_unit_data_corrupt_exif.jpg", "tests_unit_data_corrupt_exif_2.jpg"]


# ----------------------------------------------------------------------------- helpers
def raw_gps_degrees(path: Path) -> tuple[float, float, float | None]:
    """(lon, lat, GPSImgDirection) parsed from the file's TIFF bytes with struct.

    Deliberately independent of Pillow's EXIF parser and of zoomloc.core.exif: the APP1 segment
    is located by hand, IFD0 → GPS IFD followed, RATIONALs divided here.
    """
    data = path.read_bytes()
    tiff = data[data.index(b"Exif\x00\x00") + 6 :]
    bo = "<" if tiff[:2] == b"II" else ">"

    def entries(offset: int) -> dict[int, tuple[int, int, bytes]]:
        (n,) = struct.unpack_from(bo + "H", tiff, offset)
        out = {}
        for k in range(n):
            tag, typ, count, value = struct.unpack_from(bo + "HHI4s", tiff, offset + 2 + 12 * k)
            out[tag] = (typ, count, value)
        return out

    def rationals(entry) -> list[float]:
        typ, count, value = entry
        assert typ == 5  # RATIONAL
        (offset,) = struct.unpack(bo + "I", value)
        nums = struct.unpack_from(bo + "I" * 2 * count, tiff, offset)
        return [nums[2 * i] / nums[2 * i + 1] for i in range(count)]

    def letter(entry) -> str:
        return entry[2][:1].decode()

    (ifd0_offset,) = struct.unpack_from(bo + "I", tiff, 4)
    (gps_offset,) = struct.unpack(bo + "I", entries(ifd0_offset)[0x8825][2])
    gps = entries(gps_offset)
    d, m, s = rationals(gps[2])
    lat = (d + m / 60 + s / 3600) * (-1 if letter(gps[1]) == "S" else 1)
    d, m, s = rationals(gps[4])
    lon = (d + m / 60 + s / 3600) * (-1 if letter(gps[3]) == "W" else 1)
    heading = rationals(gps[17])[0] if 17 in gps else None
    return lon, lat, heading


def copy_photos(realdata: Path, dst: Path, *folders: str, names: list[str] | None = None) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    sources = [p for f in folders for p in sorted((realdata / "streetview" / f).glob("*.jpg"))]
    return [Path(shutil.copy(p, dst)) for p in sources if names is None or p.name in names]


def jpeg_with_exif(path: Path, exif, fmt: str = "JPEG", size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path, fmt, exif=exif)
    return path


def gps_exif(lat_dms, lat_ref, lon_dms, lon_ref, heading=None) -> Image.Exif:
    exif = Image.Exif()
    gps = {1: lat_ref, 2: lat_dms, 3: lon_ref, 4: lon_dms}
    if heading is not None:
        gps[17] = heading
    exif[0x8825] = gps
    return exif


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def metadata(city: Path) -> pd.DataFrame:
    return pd.read_csv(city / "streetview" / "metadata.csv", dtype={"image_id": str, "sequence_id": str})


# ----------------------------------------------------------------------------- folders of real photos
@pytest.mark.realdata
def test_real_photos_positions_match_raw_exif(realdata, tmp_path, capsys):
    src = tmp_path / "src"
    photos = copy_photos(realdata, src, "lund", "berlin", "arezzo", "bad_exif")
    assert len(photos) == 29 + 3 + 9 + 6
    city = tmp_path / "city"

    code, out, err = run_cli(capsys, "import-photos", src, "--city", city)

    assert code == 0, err
    meta = metadata(city).set_index("image_id")
    good = [p for p in photos if p.name not in BAD]
    assert sorted(meta.index) == sorted(p.stem for p in good)
    for p in good:
        lon, lat, heading = raw_gps_degrees(p)
        row = meta.loc[p.stem]
        assert abs(row.lon - lon) < 1e-6 and abs(row.lat - lat) < 1e-6, p.name
        assert np.isnan(row.heading_deg) if heading is None else abs(row.heading_deg - heading) < 1e-6, p.name
        assert (city / "streetview" / "images" / f"{p.stem}.jpg").read_bytes() == p.read_bytes()
    # The two readable "corrupt" files are near Rennes, west of Greenwich.
    for name in READABLE_BAD:
        row = meta.loc[Path(name).stem]
        assert 48.0 < row.lat < 48.2 and -1.8 < row.lon < -1.6
    assert meta.loc["DSCN0010", "captured_at"] == "2008-10-22T16:28:39"
    assert "skipped 4: 4 without GPS" in out
    for name in BAD:
        assert f"{name}: no GPS position in EXIF" in out


@pytest.mark.realdata
def test_only_bad_photos_is_an_error(realdata, tmp_path, capsys):
    src = tmp_path / "src"
    copy_photos(realdata, src, "bad_exif", names=BAD)
    city = tmp_path / "city"

    code, out, err = run_cli(capsys, "import-photos", src, "--city", city)

    assert code == 2
    assert err.count("\n") == 1
    assert f"{src}: no photo imported (4 without GPS)" in err
    assert not (city / "streetview" / "metadata.csv").exists()


@pytest.mark.realdata
def test_second_import_merges_and_counts_duplicates(realdata, tmp_path, capsys):
    first, second, city = tmp_path / "first", tmp_path / "second", tmp_path / "city"
    copy_photos(realdata, first, "lund", names=[f"lund_{i:02d}.jpg" for i in range(1, 11)])
    copy_photos(realdata, second, "lund")
    import_photos(first, city)
    before = (city / "streetview" / "metadata.csv").read_text().splitlines()

    summary = import_photos(second, city)

    after = (city / "streetview" / "metadata.csv").read_text().splitlines()
    assert after[: len(before)] == before  # existing rows kept verbatim, new ones appended
    assert len(summary.imported) == 19 and summary.total == 29 == len(after) - 1
    assert [s.reason.name for s in summary.skipped] == ["DUPLICATE"] * 10


@pytest.mark.realdata
def test_link_hard_links_jpegs(realdata, tmp_path, capsys):
    src, city = tmp_path / "src", tmp_path / "city"
    (photo,) = copy_photos(realdata, src, "berlin", names=["berlin_01.jpg"])

    code, _, err = run_cli(capsys, "import-photos", src, "--city", city, "--link")

    assert code == 0, err
    assert os.path.samefile(photo, city / "streetview" / "images" / "berlin_01.jpg")


@pytest.mark.realdata
def test_photos_outside_the_satellite_coverage_are_skipped(realdata, tmp_path):
    src, city = tmp_path / "src", tmp_path / "city"
    photos = copy_photos(realdata, src, "lund")
    lonlat = np.array([raw_gps_degrees(p)[:2] for p in photos])
    # A GeoTIFF in UTM 33N whose northern edge runs between the southern and northern photos.
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    x, y = to_utm.transform(lonlat[:, 0], lonlat[:, 1])
    north = np.sort(y)[14] + (np.sort(y)[15] - np.sort(y)[14]) / 2
    (city / "satellite").mkdir(parents=True)
    with rasterio.open(
        city / "satellite" / "ortho.tif",
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine((np.ptp(x) + 100) / 8, 0, x.min() - 50, 0, -(north - y.min() + 50) / 8, north),
    ) as dst:
        dst.write(np.zeros((1, 8, 8), np.uint8))

    summary = import_photos(src, city)

    inside = {p.stem for p, py in zip(photos, y) if py < north}
    assert set(summary.imported) == inside and len(inside) == 15
    assert {s.reason.name for s in summary.skipped} == {"OUTSIDE"} and len(summary.skipped) == 14


# ----------------------------------------------------------------------------- generated broken files
def test_broken_files_are_skipped_with_reasons(tmp_path, monkeypatch):
    src, city = tmp_path / "src", tmp_path / "city"
    good = jpeg_with_exif(src / "good one (1).jpg", gps_exif((55.0, 41.0, 53.4), "N", (13.0, 11.0, 43.4), "E", 361.5))
    jpeg_with_exif(src / "scan.png", gps_exif((48.0, 4.0, 51.5), "N", (1.0, 40.0, 4.25), "W"), fmt="PNG")
    jpeg_with_exif(src / "zero_denominator.jpg", gps_exif((48.0, 4.0, TiffImagePlugin.IFDRational(1, 0)), "N", (1.0, 0.0, 0.0), "W"))
    jpeg_with_exif(src / "no_ref.jpg", gps_exif((48.0, 4.0, 5.0), "", (1.0, 0.0, 0.0), "W"))
    jpeg_with_exif(
        src / "gps_pointer_out_of_file.jpg",
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x88\x25\x00\x04\x00\x00\x00\x01\x00\x00\xff\xff\x00\x00\x00\x00",
    )
    jpeg_with_exif(src / "null_island.jpg", gps_exif((0.0, 0.0, 0.0), "N", (0.0, 0.0, 0.0), "E"))
    whole = jpeg_with_exif(tmp_path / "whole.jpg", gps_exif((1.0, 0.0, 0.0), "N", (1.0, 0.0, 0.0), "E"), size=(32, 32))
    (src / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (src / "not_an_image.jpg").write_text("hello")
    jpeg_with_exif(src / "huge.jpg", gps_exif((1.0, 0.0, 0.0), "N", (1.0, 0.0, 0.0), "E"), size=(60, 40))
    (src / "notes.txt").write_text("ignored: not a photo")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 60x40 > limit: Pillow warns; the others are smaller

    summary = import_photos(src, city)

    reasons = {s.name: s.reason.name for s in summary.skipped}
    assert reasons == {
        "zero_denominator.jpg": "CORRUPT_EXIF",
        "no_ref.jpg": "CORRUPT_EXIF",
        "gps_pointer_out_of_file.jpg": "CORRUPT_EXIF",
        "null_island.jpg": "NO_GPS",
        "truncated.jpg": "UNREADABLE",
        "not_an_image.jpg": "UNREADABLE",
        "huge.jpg": "TOO_LARGE",
    }
    assert summary.imported == ("good_one__1_", "scan")
    meta = metadata(city).set_index("image_id")
    assert meta.loc["good_one__1_", "heading_deg"] == pytest.approx(1.5)
    assert meta.loc["scan", "lon"] == pytest.approx(-(1 + 40 / 60 + 4.25 / 3600), abs=1e-9)
    with Image.open(city / "streetview" / "images" / "scan.jpg") as im:
        assert im.format == "JPEG" and im.size == (16, 16)
    assert (city / "streetview" / "images" / "good_one__1_.jpg").read_bytes() == good.read_bytes()


def test_decompression_bomb_error_is_a_skip(tmp_path, monkeypatch):
    src = tmp_path / "src"
    jpeg_with_exif(src / "bomb.jpg", gps_exif((1.0, 0.0, 0.0), "N", (1.0, 0.0, 0.0), "E"), size=(64, 64))
    jpeg_with_exif(src / "fine.jpg", gps_exif((1.0, 0.0, 0.0), "N", (1.0, 0.0, 0.0), "E"), size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 > 2x the limit: an error, not a warning

    summary = import_photos(src, tmp_path / "city")

    assert summary.imported == ("fine",)
    assert [(s.name, s.reason.name) for s in summary.skipped] == [("bomb.jpg", "TOO_LARGE")]


def test_safe_id():
    assert safe_id("IMG 0001 (copy)") == "IMG_0001__copy_"
    assert safe_id("..hidden..name") == "_.hidden.name"
    assert safe_id("Straße") == "Stra_e"


# ----------------------------------------------------------------------------- records
def write_images(folder: Path, *ids: str) -> None:
    for image_id in ids:
        jpeg_with_exif(folder / f"{image_id}.jpg", Image.Exif())


def test_csv_records(tmp_path, capsys):
    src = tmp_path / "records"
    write_images(src / "images", "1001", "1002", "1003")
    write_images(tmp_path, "x")  # "../x" must not find this file
    (src / "records.csv").write_text(
        "id,lon,lat,compass_angle,captured_at,sequence\n"
        "1001,13.19,55.70,-10,1600000000000,seqA\n"
        "1002,13.191,55.701,,,seqA\n"
        "../x,13.192,55.702,0,,seqA\n"
        "1001,13.193,55.703,0,,seqB\n"
        "1003,13.194,,0,,seqB\n"
        "1004,13.195,55.705,0,,seqB\n"
    )
    city = tmp_path / "city"

    code, out, err = run_cli(capsys, "import-photos", src / "records.csv", "--city", city)

    assert code == 0, err
    meta = metadata(city)
    assert list(meta.image_id) == ["1001", "1002"]
    assert list(meta.columns) == ["image_id", "lon", "lat", "heading_deg", "fov_deg", "captured_at", "sequence_id"]
    assert meta.lon.tolist() == [13.19, 13.191] and meta.lat.tolist() == [55.70, 55.701]
    assert meta.heading_deg.iloc[0] == 350.0 and np.isnan(meta.heading_deg.iloc[1])
    assert meta.captured_at.iloc[0] == "2020-09-13T12:26:40.000+00:00"
    assert meta.sequence_id.tolist() == ["seqA", "seqA"]
    assert "skipped 4: 1 with an unsafe id, 1 with a duplicate id, 1 without an image file, 1 without a valid position" in out
    assert "../x: image_id '../x' contains a path separator" in out
    assert not (city / "streetview" / "x.jpg").exists()


def test_geojson_records_with_images_beside_the_file(tmp_path, capsys):
    src = tmp_path / "records"
    write_images(src, "a1", "a2", "a3")
    features = [
        {
            "type": "Feature",
            "properties": {"id": "a1", "compass_angle": 90.0, "sequence": "s"},
            "geometry": {"type": "Point", "coordinates": [11.88, 43.46]},
        },
        {"type": "Feature", "properties": {"id": "a2"}, "geometry": {"type": "Point", "coordinates": [11.89, 43.47]}},
        {"type": "Feature", "properties": {"id": "a3"}, "geometry": {"type": "LineString", "coordinates": [[11.8, 43.4], [11.9, 43.5]]}},
    ]
    (src / "records.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))

    summary = import_photos(src / "records.geojson", tmp_path / "city")

    assert summary.imported == ("a1", "a2")
    assert [(s.name, s.reason.name) for s in summary.skipped] == [("a3", "NO_POSITION")]
    meta = metadata(tmp_path / "city")
    assert meta.lon.tolist() == [11.88, 11.89] and meta.heading_deg.iloc[0] == 90.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file or folder"),
        (lambda p: p.mkdir() or p, "holds no photo"),
        (lambda p: (p.parent / "r.csv").write_text("id,lat\n1,2\n") and p.parent / "r.csv", "missing required column(s) lon"),
        (lambda p: (p.parent / "r.txt").write_text("x") and p.parent / "r.txt", "not a folder, CSV or GeoJSON"),
        (lambda p: (p.parent / "r.csv").write_text("id,lon,lat\n") and p.parent / "r.csv", "no photo imported (it holds no record)"),
        (lambda p: (p.parent / "r.geojson").write_text("{oops") and p.parent / "r.geojson", "not a readable GeoJSON"),
    ],
)
def test_bad_sources_exit_2(tmp_path, capsys, make, message):
    src = make(tmp_path / "src")

    code, _, err = run_cli(capsys, "import-photos", src, "--city", tmp_path / "city")

    assert code == 2 and err.count("\n") == 1
    assert f"{src}: {message}" in err
