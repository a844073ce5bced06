"""Bad inputs from strangers: every command refuses them the same way.

Each case builds one bad input in its own folder and names the command line that reads it. The
refusal must be exit code 2, one line on stderr naming the file (and the row or key) and the
problem, no traceback, and nothing created or changed. Commands run in-process (as the other CLI
tests do), with stderr captured at the file descriptor and Python warnings and log records that
a real run would print counted as stderr lines.

Already proven elsewhere, and not repeated here: GeoTIFFs without CRS, without geotransform,
georeferenced by GCPs only, with 2 bands, unreadable or truncated, and an empty ``satellite/``
(``test_pyramid.py::test_cli_rejects_bad_geotiffs`` and ``::test_cli_rejects_bad_cities``);
split parameters that leave no train images (``test_split.py::test_errors_exit_2_without_writing``).
"""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from zoomloc.cli.main import main

# Photos of bad_exif/ without any readable GPS (the two others still carry a fix near Rennes).
NO_GPS = (
    "tests_unit_data_corrupt_exif_large_thumbnail.jpg",
    "tests_unit_data_corrupt_exif_trusted_wrong_type.jpg",
    "tests_unit_data_corrupt_exif_wrong_type.jpg",
    "tests_unit_data_empty_exif.jpg",
)
# Warnings a fresh interpreter does not print (the default filters ignore them).
_SILENT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@dataclass(frozen=True)
class Refusal:
    """A command line that must be refused, and what its error line must name."""

    argv: list
    names: tuple[str, ...]  # the file, then the row, key or problem
    payload_marker: Path | None = None  # a file that only unpickling the bad input would create


@dataclass(frozen=True)
class Inputs:
    """What a case builds from: its own folder, and the shared fixtures on demand."""

    tmp: Path
    request: pytest.FixtureRequest = field(repr=False)

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def city(self, *shared: str) -> Path:
        """A city folder of this case whose ``shared`` entries link to tiny_city's (read only)."""
        city = self.tmp / "city"
        city.mkdir(exist_ok=True)
        for name in shared:
            (city / name).symlink_to(self.fixture("tiny_city") / name)
        return city

    def photo(self) -> Path:
        """A readable street photo (tiny_city's first)."""
        return min((self.fixture("tiny_city") / "streetview" / "images").glob("*.jpg"))

    def localize(self, photo: Path, model: Path | None = None) -> list:
        return ["localize", photo, "--model", model or self.fixture("short_run"), "--city", self.city("pyramid.h5"), "--quiet"]


def _named(fn: Callable, name: str) -> Callable:
    """``fn`` under ``name``, the id its test gets."""
    fn.__name__ = name
    return fn


# ----------------------------------------------------------------------------- photos
def corrupt_jpeg(f: Inputs) -> Refusal:
    photo = f.tmp / "corrupt.jpg"
    photo.write_bytes(f.photo().read_bytes()[:300] + b"\x00" * 50)
    return Refusal(f.localize(photo), (str(photo), "not a readable image"))


def empty_photo(f: Inputs) -> Refusal:
    photo = f.tmp / "empty.jpg"
    photo.touch()
    return Refusal(f.localize(photo), (str(photo), "not a readable image"))


def heic_photo(f: Inputs) -> Refusal:
    """An iPhone HEIC (ISO-BMFF) file: a format Pillow cannot decode."""
    photo = f.tmp / "IMG_0001.heic"
    photo.write_bytes(struct.pack(">I4s4sI", 24, b"ftyp", b"heic", 0) + b"mif1heic" + b"\x00" * 64)
    return Refusal(f.localize(photo), (str(photo), "not a readable image"))


def decompression_bomb(f: Inputs) -> Refusal:
    """A 100-byte PNG that declares 40 000 × 40 000 pixels: refused from its header, never decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    photo = f.tmp / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)  # 8-bit RGB
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return Refusal(f.localize(photo), (str(photo), "decompression bomb"))


def no_gps(name: str, f: Inputs) -> Refusal:
    """A real photo whose EXIF has no usable GPS, in a folder import where EXIF is the only source."""
    src = f.tmp / "photos"
    src.mkdir()
    (src / name).symlink_to(f.fixture("realdata") / "streetview" / "bad_exif" / name)
    return Refusal(["import-photos", src, "--city", f.tmp / "city"], (str(src), name, "no GPS position in EXIF"))


def photo_outside_region(f: Inputs) -> Refusal:
    """A photo taken in Berlin, imported into the Zürich city: outside its satellite imagery."""
    src = f.tmp / "photos"
    src.mkdir()
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 7.0), 3: "E", 4: (13.0, 24.0, 3.0)}
    with Image.open(f.photo()) as img:
        img.save(src / "berlin.jpg", exif=exif)
    argv = ["import-photos", src, "--city", f.city("satellite")]
    return Refusal(argv, (str(src), "berlin.jpg", "outside the satellite coverage"))


# ----------------------------------------------------------------------------- metadata.csv and split
def _split_with_metadata(f: Inputs, damage: Callable[[pd.DataFrame], pd.DataFrame], *args: str) -> list:
    """``zoomloc split`` on a city whose metadata.csv is a street of 40 photos, 10 m apart, after ``damage``."""
    n = 40
    meta = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(n)], "lon": 8.54, "lat": 47.37 + np.arange(n) * 9e-5})
    _metadata_csv(f).parent.mkdir(parents=True)
    damage(meta.astype({"lon": object, "lat": object})).to_csv(_metadata_csv(f), index=False)
    return ["split", f.tmp / "city", *args]


def _metadata_csv(f: Inputs) -> Path:
    return f.tmp / "city" / "streetview" / "metadata.csv"


def _set(row: int, column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def damage(meta: pd.DataFrame) -> pd.DataFrame:
        meta.loc[row, column] = value
        return meta

    return damage


def _bad_row(name: str, row: int, column: str, value, problem: str) -> Callable[[Inputs], Refusal]:
    """A case: one cell of metadata.csv set to ``value``; the error names line ``row + 2``."""

    def case(f: Inputs) -> Refusal:
        argv = _split_with_metadata(f, _set(row, column, value))
        return Refusal(argv, (str(_metadata_csv(f)), f"line {row + 2}: {problem}"))

    return _named(case, name)


def metadata_without_lat(f: Inputs) -> Refusal:
    argv = _split_with_metadata(f, lambda meta: meta.drop(columns="lat"))
    return Refusal(argv, (str(_metadata_csv(f)), "missing required column(s) lat"))


def split_leaves_no_test_images(f: Inputs) -> Refusal:
    """10 m blocks along one street, 15 m apart: every test block lies within the buffer of another."""
    argv = _split_with_metadata(f, lambda meta: meta, "--block-m", "10", "--buffer-m", "15", "--fractions", "0.9", "0", "0.1")
    return Refusal(argv, (str(_metadata_csv(f)), "split leaves no test images"))


def split_csv_with_unknown_split(f: Inputs) -> Refusal:
    city = f.city("streetview", "pyramid.h5")
    split = pd.read_csv(f.fixture("tiny_city") / "split.csv", dtype=str)
    split.loc[5, "split"] = "holdout"
    split.to_csv(city / "split.csv", index=False)
    return Refusal(_train(f, city), (str(city / "split.csv"), "line 7: split 'holdout'"))


# ----------------------------------------------------------------------------- pyramid and configs
def _train(f: Inputs, city: Path, config: Path | None = None) -> list:
    config = config or f.fixture("short_run") / "config.yaml"
    return ["train", city, "--config", config, "--out", f.tmp / "run", "--quiet"]


def truncated_pyramid(f: Inputs) -> Refusal:
    city = f.city("streetview", "split.csv")
    whole = (f.fixture("tiny_city") / "pyramid.h5").read_bytes()
    (city / "pyramid.h5").write_bytes(whole[: len(whole) // 2])
    return Refusal(_train(f, city), (str(city / "pyramid.h5"), "truncated or corrupt"))


def pyramid_of_another_grid(f: Inputs) -> Refusal:
    """A pyramid rebuilt with k=2: the model zooms over a 4×4 grid."""
    from zoomloc.geo.pyramid import PyramidSpec, build_pyramid

    city = f.city("satellite", "streetview", "split.csv")
    build_pyramid(city, PyramidSpec(k=2, levels=2, terminal_m=None, side_m=400.0, px=8), progress=False)
    argv = ["evaluate", city, "--model", f.fixture("short_run"), "--out", f.tmp / "eval" / "metrics.json", "--quiet"]
    return Refusal(argv, (str(city / "pyramid.h5"), "built for another grid"))


def config_unknown_key(f: Inputs) -> Refusal:
    config = f.tmp / "run.yaml"
    config.write_text("train: {steps: 4, stepz: 3}\n")
    return Refusal(_train(f, f.city("streetview", "split.csv", "pyramid.h5"), config), (str(config), "unknown key 'train.stepz'"))


def config_wrong_type(f: Inputs) -> Refusal:
    config = f.tmp / "city.yaml"
    config.write_text("size_m: big\n")
    return Refusal(["synth-city", f.tmp / "city", "--config", config, "--quiet"], (str(config), "key 'size_m' must be float"))


# ----------------------------------------------------------------------------- checkpoints
class Payload:
    """Unpickling this creates ``marker``: the proof that loading a file ran its code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _payload(folder: Path, path: Path, save: Callable[[object, Path], None]) -> Path:
    """Write a pickle carrying a :class:`Payload` to ``path``; return the marker it would create."""
    marker = folder / "payload_ran"
    save({"step": 8, "optimizer": Payload(marker)}, path)
    return marker


def _pickle_dump(obj: object, path: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _pickle_load(path: Path) -> object:
    with open(path, "rb") as fh:
        return pickle.load(fh)


def pickle_model_localize(f: Inputs) -> Refusal:
    model = f.tmp / "model.pt"
    marker = _payload(f.tmp, model, torch.save)
    return Refusal(f.localize(f.photo(), model), (str(model), "not a zoomloc checkpoint: a torch.save archive"), marker)


def pickle_model_evaluate(f: Inputs) -> Refusal:
    model = f.tmp / "model.pkl"
    marker = _payload(f.tmp, model, _pickle_dump)
    argv = ["evaluate", f.city("streetview", "split.csv", "pyramid.h5"), "--model", model, "--out", f.tmp / "m.json", "--quiet"]
    return Refusal(argv, (str(model), "not a zoomloc checkpoint: a pickle,"), marker)


def _resume_with_payload(save: Callable[[object, Path], None], f: Inputs) -> Refusal:
    """A run folder to resume whose train_state.pt (read by torch.load) carries a payload."""
    run = f.tmp / "run"
    run.mkdir()
    shutil.copy(f.fixture("short_run") / "config.yaml", run)
    marker = _payload(f.tmp, run / "train_state.pt", save)
    argv = ["train", f.city("streetview", "split.csv", "pyramid.h5"), "--out", run, "--resume", "--quiet"]
    return Refusal(argv, (str(run / "train_state.pt"), "unpickling it could run code"), marker)


def checkpoint_of_another_version(f: Inputs) -> Refusal:
    from safetensors.torch import save_file

    model = f.tmp / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(model), metadata={"format_version": "0"})
    return Refusal(f.localize(f.photo(), model), (str(model), "checkpoint format version 0"))


CASES = [
    corrupt_jpeg,
    empty_photo,
    heic_photo,
    decompression_bomb,
    *(_named(partial(no_gps, name), f"no_gps_{name.removeprefix('tests_unit_data_')[:-4]}") for name in NO_GPS),
    photo_outside_region,
    metadata_without_lat,
    _bad_row("lat_nan", 3, "lat", "nan", "lat 'nan' is not a number within ±90"),
    _bad_row("lon_out_of_range", 7, "lon", "200.5", "lon '200.5' is not a number within ±180"),
    _bad_row("image_id_with_slash", 2, "image_id", "a/b", "image_id 'a/b' contains a path separator or '..'"),
    _bad_row("image_id_dotdot", 9, "image_id", "..", "image_id '..' contains a path separator or '..'"),
    _bad_row("duplicate_image_id", 12, "image_id", "img000", "duplicate image_id 'img000'"),
    split_leaves_no_test_images,
    split_csv_with_unknown_split,
    truncated_pyramid,
    pyramid_of_another_grid,
    config_unknown_key,
    config_wrong_type,
    pickle_model_localize,
    pickle_model_evaluate,
    _named(partial(_resume_with_payload, torch.save), "torch_pickle_train_state"),
    _named(partial(_resume_with_payload, _pickle_dump), "raw_pickle_train_state"),
    checkpoint_of_another_version,
]


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every entry under ``root`` (links not followed): files with size and mtime, folders as None."""
    tree: dict[str, tuple[int, int] | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            tree[str(path.relative_to(root))] = None if name in dirs else (st.st_size, st.st_mtime_ns)
    return tree


def assert_refused(case: Refusal, root: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    """Exit code 2, one stderr line naming ``case.names``, no traceback, nothing under ``root`` written."""
    before = _tree(root)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([str(a) for a in case.argv])
    out, err = capfd.readouterr()
    # What a real run would add to stderr: warnings not silenced by default, and log records
    # that Python's last-resort handler prints (WARNING and above, when nothing is configured).
    printed = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, _SILENT)]
    printed += [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    lines = err.splitlines() + printed
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].strip(), lines
    assert "Traceback" not in err and out == "", (out, err)
    for name in case.names:
        assert name in lines[0], (name, lines[0])
    assert _tree(root) == before, "the refused command created or changed files"


@pytest.mark.parametrize("build", CASES, ids=lambda build: build.__name__.replace("_", "-"))
def test_bad_input_is_refused(build, tmp_path, request, capfd, caplog):
    case = build(Inputs(tmp_path, request))

    assert_refused(case, tmp_path, capfd, caplog)

    if case.payload_marker is not None:
        assert not case.payload_marker.exists(), "loading the file ran its code"


@pytest.mark.parametrize("save, load", [(torch.save, partial(torch.load, weights_only=False)), (_pickle_dump, _pickle_load)])
def test_the_payloads_are_live(tmp_path, save, load):
    """Unpickled the unsafe way, the payload files above do run code: their refusal proves something."""
    marker = _payload(tmp_path, tmp_path / "payload.pt", save)
    load(tmp_path / "payload.pt")
    assert marker.exists()
