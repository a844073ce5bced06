"""The capture input of ``zoomloc localize --track``: EXIF times, records files, grouping and order."""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image
from PIL.ExifTags import IFD, Base

from zoomloc.core.errors import InputError
from zoomloc.core.exif import CorruptExifError, read_capture_time
from zoomloc.data.photos import Photo
from zoomloc.inference.captures import expand_photos, group_captures, photo_headings, photo_times, read_records

DATE_TIME_ORIGINAL, SUBSEC_TIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x9003, 0x9291, 0x9011


# ----------------------------------------------------------------------------- helpers
def jpeg(path: Path, original=None, subsec=None, offset=None, base_time=None) -> Path:
    """A 16×16 JPEG whose EXIF carries the given time tags (written by Pillow, read back from the file)."""
    img = Image.new("RGB", (16, 16), (120, 90, 60))
    exif = img.getexif()
    if base_time is not None:
        exif[Base.DateTime] = base_time
    ifd = exif.get_ifd(IFD.Exif)
    for tag, value in ((DATE_TIME_ORIGINAL, original), (SUBSEC_TIME_ORIGINAL, subsec), (OFFSET_TIME_ORIGINAL, offset)):
        if value is not None:
            ifd[tag] = value
    img.save(path, exif=exif)
    return path


def exif_time(path: Path) -> datetime | None:
    with Image.open(path) as img:
        return read_capture_time(img)


def refused(call, *args, **kwargs) -> str:
    """The one-line message of the InputError ``call`` raises."""
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def captures_from(tmp_path: Path, records: Path, order: list[str]) -> list:
    """The captures of photos named ``order`` (stems, given in that order) under ``records``."""
    photos = [Photo.read(jpeg(tmp_path / f"{stem}.jpg")) for stem in order]
    times, sequences = photo_times(photos, read_records(records), records)
    return group_captures([p.path.name for p in photos], times, sequences)


def stems(capture, order: list[str]) -> list[str]:
    return [order[i] for i in capture.indices]


# ----------------------------------------------------------------------------- EXIF times
def test_subsecond_exif_time_is_read_back_exactly(tmp_path):
    path = jpeg(tmp_path / "a.jpg", original="2026:05:01 14:03:22", subsec="25")
    assert exif_time(path) == datetime(2026, 5, 1, 14, 3, 22, 250000)
    assert exif_time(path).tzinfo is None
    photo = Photo.read(path)
    assert photo.captured_at == datetime(2026, 5, 1, 14, 3, 22, 250000) and photo.time_problem is None
    assert photo_times([photo], None) == ([datetime(2026, 5, 1, 14, 3, 22, 250000, tzinfo=UTC).timestamp()], [None])


def test_utc_offset_gives_an_aware_time(tmp_path):
    path = jpeg(tmp_path / "a.jpg", original="2026:05:01 14:03:22", subsec="5", offset="+02:00")
    when = exif_time(path)
    assert when.utcoffset() == timedelta(hours=2)
    assert when == datetime(2026, 5, 1, 12, 3, 22, 500000, tzinfo=UTC)
    west = jpeg(tmp_path / "b.jpg", original="2026:05:01 14:03:22", offset="-05:30")
    assert exif_time(west).utcoffset() == -timedelta(hours=5, minutes=30)


def test_base_datetime_is_the_fallback_and_unknown_clocks_are_no_time(tmp_path):
    assert exif_time(jpeg(tmp_path / "a.jpg", base_time="2026:05:01 09:00:01")) == datetime(2026, 5, 1, 9, 0, 1)
    assert exif_time(jpeg(tmp_path / "b.jpg", original="2026:05:01 09:00:02", base_time="2026:05:01 09:00:59")).second == 2
    assert exif_time(jpeg(tmp_path / "c.jpg", original="0000:00:00 00:00:00")) is None
    assert exif_time(jpeg(tmp_path / "d.jpg", original="    :  :     :  :  ")) is None
    assert exif_time(jpeg(tmp_path / "e.jpg")) is None


@pytest.mark.parametrize(
    ("tags", "named"),
    [
        ({"original": "2026:13:45 99:00:00"}, "2026:13:45 99:00:00"),
        ({"original": b"\xff\xfe\x01garbage"}, "garbage"),
        ({"original": "2026:05:01 14:03:22", "subsec": "2x"}, "2x"),
        ({"original": "2026:05:01 14:03:22", "offset": "CEST"}, "CEST"),
    ],
)
def test_unreadable_exif_time_is_a_time_problem_that_a_track_refuses(tmp_path, tags, named):
    path = jpeg(tmp_path / "bad.jpg", **tags)
    with pytest.raises(CorruptExifError, match=named):
        exif_time(path)
    photo = Photo.read(path)  # a single photo is still localized
    assert photo.captured_at is None and named in photo.time_problem and photo.image.size == (16, 16)
    message = refused(photo_times, [Photo.read(jpeg(tmp_path / "good.jpg", original="2026:05:01 14:03:22")), photo], None)
    assert message.startswith(f"{path}: ") and named in message


# ----------------------------------------------------------------------------- photo arguments
def test_a_folder_expands_to_its_photos_sorted_by_name(tmp_path):
    folder = tmp_path / "walk"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.JPG", "c.png", "d.jpeg", "notes.txt", ".hidden.jpg", "sub/e.jpg"):
        (folder / name).write_bytes(b"")
    single = tmp_path / "z.jpg"
    single.write_bytes(b"")
    assert expand_photos([single, folder]) == [single] + [folder / n for n in ("a.JPG", "b.jpg", "c.png", "d.jpeg")]
    (tmp_path / "empty").mkdir()
    assert refused(expand_photos, [tmp_path / "empty"]) == f"{tmp_path / 'empty'}: no photos (*.jpg, *.jpeg, *.png) in this folder"
    # A path that is neither stays as given: reading it says "no such photo", and a batch skips it.
    assert expand_photos([single, tmp_path / "nope"]) == [single, tmp_path / "nope"]


# ----------------------------------------------------------------------------- records files
SHUFFLED = ["b2", "a3", "b1", "a1", "a2"]


def test_mapillary_csv_splits_captures_and_orders_them_by_time(tmp_path):
    records = tmp_path / "records.csv"
    records.write_text(
        "id,lon,lat,captured_at,sequence\n"  # positions are never read
        "a1,8.5,47.3,1777640000000,seqA\n"
        "a2,8.5,47.3,1777640002500,seqA\n"
        "a3,8.5,47.3,1777640004000,seqA\n"
        "b1,9.0,47.0,1777650000000,seqB\n"
        "b2,9.0,47.0,1777650001000,seqB\n"
    )
    b, a = captures_from(tmp_path, records, SHUFFLED)  # seqB appears first
    assert (b.name, stems(b, SHUFFLED), list(b.times_s)) == ("seqB", ["b1", "b2"], [0.0, 1.0])
    assert (a.name, stems(a, SHUFFLED), list(a.times_s)) == ("seqA", ["a1", "a2", "a3"], [0.0, 2.5, 4.0])
    assert not a.times_s.flags.writeable


def test_zoomloc_csv_with_iso_times_and_a_city_s_metadata_columns(tmp_path):
    records = tmp_path / "metadata.csv"
    records.write_text(
        "image_id,lon,lat,heading_deg,fov_deg,captured_at,sequence_id\n"
        "a1,8.5,47.3,0,90,2026-05-01T14:00:00+02:00,seqA\n"
        "a2,8.5,47.3,0,90,2026-05-01T12:00:03.5Z,seqA\n"
        "a3,8.5,47.3,0,90,2026-05-01T14:00:04+02:00,seqA\n"
        "b1,8.5,47.3,0,90,2026-05-01T14:00:00,seqB\n"
        "b2,8.5,47.3,0,90,2026-05-01T14:00:00,seqB\n"  # equal times keep the given order
    )
    b, a = captures_from(tmp_path, records, SHUFFLED)  # seqB appears first
    assert stems(a, SHUFFLED) == ["a1", "a2", "a3"] and list(a.times_s) == [0.0, 3.5, 4.0]
    assert stems(b, SHUFFLED) == ["b2", "b1"] and list(b.times_s) == [0.0, 0.0]
    frame = read_records(records)
    assert list(frame.columns) == ["image_id", "captured_at_s", "sequence_id", "heading_deg"] and (frame["heading_deg"] == 0).all()
    assert frame["captured_at_s"].iloc[0] == datetime(2026, 5, 1, 12, tzinfo=UTC).timestamp()


def test_geojson_records_are_read_like_the_csv(tmp_path):
    records = tmp_path / "records.geojson"
    frame = gpd.GeoDataFrame(
        {
            "id": [1234567890123456, 2, 3, 4, 5],
            "captured_at": [1777640004000, 1777640000000, 1777650001000, 1777640002500, 1777650000000],
            "sequence": ["seqA", "seqA", "seqB", "seqA", "seqB"],
        },
        geometry=[shapely.Point(8.5, 47.3)] * 5,
        crs="EPSG:4326",
    )
    frame.to_file(records, driver="GeoJSON")
    order = ["3", "1234567890123456", "5", "2", "4"]
    b, a = captures_from(tmp_path, records, order)  # seqB appears first
    assert (a.name, stems(a, order), list(a.times_s)) == ("seqA", ["2", "4", "1234567890123456"], [0.0, 2.5, 4.0])
    assert (b.name, stems(b, order), list(b.times_s)) == ("seqB", ["5", "3"], [0.0, 1.0])


def test_records_give_the_photos_compass_headings_else_exif(tmp_path):
    """Mapillary's compass_angle (or zoomloc's heading_deg) is what a track's photo witness filters by."""
    records = tmp_path / "records.csv"
    records.write_text("id,captured_at,sequence,compass_angle\na,1777640000000,s,359.5\nb,1777640001000,s,\n")
    photos = [Photo.read(jpeg(tmp_path / f"{stem}.jpg")) for stem in "ab"]
    headings = photo_headings(photos, read_records(records))
    assert headings[0] == 359.5 and np.isnan(headings[1])
    assert np.isnan(photo_headings(photos)).all()  # without records, EXIF's GPSImgDirection: these photos have none
    records.write_text("image_id,captured_at,heading_deg\na,1777640000000,north\n")
    assert refused(read_records, records) == f"{records}: line 2: heading_deg 'north' is no compass angle in degrees"


def test_an_unreadable_captured_at_names_the_file_and_line(tmp_path):
    records = tmp_path / "records.csv"
    records.write_text("image_id,captured_at,sequence_id\na,1777640000000,s\nb,yesterday,s\n")
    message = refused(read_records, records)
    assert message.startswith(f"{records}: line 3: captured_at 'yesterday'")


def test_records_without_times_or_sequences_or_without_the_photo_are_refused(tmp_path):
    records = tmp_path / "positions.csv"
    records.write_text("image_id,lon,lat\na,8.5,47.3\n")
    assert "captured_at" in refused(read_records, records) and "sequence_id" in refused(read_records, records)
    records.write_text("name,captured_at\na,1\n")
    assert "image_id" in refused(read_records, records)
    records.write_text("image_id,captured_at\na,1777640000000\na,1777640001000\n")
    assert refused(read_records, records) == f"{records}: line 3: image_id 'a' again (first on line 2)"
    records.write_text("image_id,captured_at\na,1777640000000\n")
    photos = [Photo.read(jpeg(tmp_path / "a.jpg")), Photo.read(jpeg(tmp_path / "b.jpg"))]
    message = refused(photo_times, photos, read_records(records), records)
    assert message.startswith(f"{tmp_path / 'b.jpg'}: ") and str(records) in message


def test_records_override_exif(tmp_path):
    """With records, a photo's EXIF time is not read, not even an unreadable one."""
    records = tmp_path / "records.csv"
    records.write_text("image_id,captured_at,sequence_id\nbad,1777640000000,s\n")
    photo = Photo.read(jpeg(tmp_path / "bad.jpg", original="2026:13:45 99:00:00"))
    assert photo.time_problem
    assert photo_times([photo], read_records(records)) == ([1777640000.0], ["s"])


# ----------------------------------------------------------------------------- grouping
def test_untimed_capture_is_spaced_by_the_interval_in_the_given_order():
    (capture,) = group_captures(["c", "a", "b"], [None, None, None], [None, None, None], interval_s=2.5)
    assert capture.name == "capture" and capture.indices == (0, 1, 2) and list(capture.times_s) == [0.0, 2.5, 5.0]
    message = refused(group_captures, ["c", "a", "b"], [None, None, None], [None, None, None])
    assert "--interval SECONDS" in message
    (lone,) = group_captures(["a"], [None], [None])  # one photo needs no time
    assert list(lone.times_s) == [0.0]


@pytest.mark.parametrize("interval", [0, -1.5, float("nan"), float("inf")])
def test_interval_must_be_positive(interval):
    message = refused(group_captures, ["a", "b"], [None, None], [None, None], interval_s=interval)
    assert message.startswith("--interval must be a positive number of seconds, got ")


def test_mixed_timed_and_untimed_photos_are_refused_by_default_and_interpolated_on_request():
    names = ["p0", "p1", "p2", "p3", "p4", "p5"]
    times = [None, 100.0, None, None, 106.0, None]
    message = refused(group_captures, names, times, [None] * 6)
    assert message.startswith("p0: no capture time") and "--untimed order" in message
    (capture,) = group_captures(names, times, [None] * 6, untimed="order")  # median step: 2 s per photo
    assert capture.indices == (0, 1, 2, 3, 4, 5)
    np.testing.assert_allclose(capture.times_s, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    (capture,) = group_captures(names, times, [None] * 6, untimed="order", interval_s=0.5)
    np.testing.assert_allclose(capture.times_s, [0.0, 0.5, 2.5, 4.5, 6.5, 7.0])
    message = refused(group_captures, ["a", "b"], [None, 5.0], [None, None], untimed="order")
    assert "only one photo" in message and "--interval" in message


def test_captures_keep_the_order_of_first_appearance_and_names_of_their_own():
    captures = group_captures(
        ["a", "b", "c", "d"], [3.0, None, 1.0, 2.0], ["capture", None, "capture", "  "], interval_s=1.0, untimed="order"
    )
    assert [(c.name, c.indices) for c in captures] == [("capture", (2, 0)), ("capture 2", (1, 3))]


# ----------------------------------------------------------------------------- real photos
def test_real_exif_times_order_a_walk(realdata):
    """arezzo/: 9 photos of one walk whose EXIF carries DateTimeOriginal; given shuffled, they come back in time order."""
    paths = expand_photos([realdata / "streetview" / "arezzo"])
    shuffled = random.Random(0).sample(paths, len(paths))
    photos = [Photo.read(p) for p in shuffled]
    assert all(p.captured_at is not None and p.time_problem is None for p in photos)
    (capture,) = group_captures([p.path.name for p in photos], *photo_times(photos, None))
    ordered = [photos[i] for i in capture.indices]
    assert [p.captured_at for p in ordered] == sorted(p.captured_at for p in photos)
    assert np.all(np.diff(capture.times_s) >= 0) and capture.times_s[0] == 0
    assert 60 < capture.times_s[-1] < 3 * 3600  # a walk, not a burst or a holiday


def test_real_walk_timed_by_the_mapillary_app(realdata, tmp_path):
    """lund/: 29 photos of one walk from the Mapillary app, which wrote no EXIF date: its time (UTC) and sequence
    are in a JSON ImageDescription, read as the photo's own. Shuffled, they come back as one capture in time order;
    a records file with the same times and sequence gives the same capture."""
    paths = expand_photos([realdata / "streetview" / "lund"])
    assert len(paths) == 29
    copies = tmp_path / "photos"
    copies.mkdir()
    shuffled = [Path(shutil.copy(p, copies)) for p in random.Random(1).sample(paths, len(paths))]
    photos = [Photo.read(p) for p in shuffled]
    times, sequences = photo_times(photos, None)
    assert None not in times and len(set(sequences)) == 1 and sequences[0]
    (from_exif,) = group_captures([p.path.name for p in photos], times, sequences)
    assert [photos[i].path.name for i in from_exif.indices] == [p.name for p in paths]  # the files are named in time order

    rows = []
    for path in paths:
        with Image.open(path) as img:
            app = json.loads(img.getexif()[Base.ImageDescription])
        when = datetime.strptime(app["MAPCaptureTime"], "%Y_%m_%d_%H_%M_%S_%f")
        rows.append({"image_id": path.stem, "captured_at": when.isoformat(), "sequence_id": app["MAPSequenceUUID"]})
    records = tmp_path / "lund.csv"
    pd.DataFrame(rows).sample(frac=1, random_state=0).to_csv(records, index=False)
    (capture,) = group_captures([p.path.name for p in photos], *photo_times(photos, read_records(records), records))
    assert capture.name == rows[0]["sequence_id"]
    assert [photos[i].path.name for i in capture.indices] == [p.name for p in paths]  # the files are named in time order
    steps = np.diff(capture.times_s)
    assert np.all(steps > 0) and steps.max() < 30  # a photo every few seconds
    assert 60 < capture.times_s[-1] < 600  # 29 photos in a few minutes' walk
    assert capture.indices == from_exif.indices and np.allclose(capture.times_s, from_exif.times_s)
