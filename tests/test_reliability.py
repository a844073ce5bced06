"""Long jobs that are killed, answers that must not vary, real photos that must not break.

Interruptions are real signals to a ``python -m zoomloc`` subprocess, sent once it has started
writing: SIGTERM must unwind (exit 143, temporary files removed), SIGKILL may leave a hidden
``.NAME.*.partial`` temporary but never a damaged final file, and ``train --resume`` must then
finish exactly as the uninterrupted run did.

Proven elsewhere: the same seed gives a byte-identical synthetic city
(``test_synth.py::test_same_seed_same_bytes_different_seed_different``) and an identical
split.csv (``test_split.py::test_same_seed_same_bytes_other_seed_differs``); every real
orthophoto builds a pyramid whose views match independent reads (``test_pyramid_realdata.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import train_in_process, untimed_records, write_run_config  # tests/ is on sys.path under pytest
from PIL import Image
from safetensors.torch import load_file

from zoomloc.cli.main import main
from zoomloc.core.atomic import write_text
from zoomloc.data.photos import load_photo
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.checkpoint import BEST, LAST, TRAIN_STATE, load_train_state

TIMEOUT_S = 300
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGKILL, id="SIGKILL")]
TIMING_KEYS = {"latency_ms", "peak_rss_mb", "index_build_s"}  # measured, so never equal twice


def _kill_when(ready: Callable[[], bool], sig: signal.Signals, *argv: str | Path) -> tuple[int, str]:
    """Run ``zoomloc ARGV --quiet``, send it ``sig`` as soon as ``ready()``; its exit code and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoomloc", *map(str, argv), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"zoomloc {argv[0]} ended or stalled before it could be interrupted: {proc.communicate()}")
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, err


def _assert_stopped_by(sig: signal.Signals, code: int, err: str, command: str) -> None:
    """SIGTERM: the one-line notice and exit 143; SIGKILL: killed on the spot."""
    if sig == signal.SIGTERM:
        assert (code, err) == (128 + signal.SIGTERM, f"zoomloc {command}: interrupted\n")
    else:
        assert code == -signal.SIGKILL, (code, err)


def _assert_temporaries_harmless(sig: signal.Signals, folder: Path) -> None:
    """None after SIGTERM; after SIGKILL only hidden ``.NAME.*.partial`` files, which no reader opens."""
    left = [p.name for p in folder.iterdir() if p.name.endswith(".partial")]
    if sig == signal.SIGTERM:
        assert left == []
    assert all(name.startswith(".") for name in left), left


# ----------------------------------------------------------------------------- build-pyramid
def _partial_pyramid_written(city: Path) -> bool:
    """True once the build's temporary pyramid holds data (it is being written)."""
    for partial in city.glob(".pyramid.h5.*.partial"):
        try:
            if partial.stat().st_size > 0:
                return True
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return False


@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_build_pyramid_keeps_the_previous_pyramid(tiny_city, tmp_path, sig):
    """A rebuild (3 levels of 64 px, seconds) killed mid-write: the previous pyramid.h5 is untouched."""
    city = tmp_path / "city"
    city.mkdir()
    (city / "satellite").symlink_to(tiny_city / "satellite")
    previous = Path(shutil.copy(tiny_city / "pyramid.h5", city / "pyramid.h5")).read_bytes()

    code, err = _kill_when(
        lambda: _partial_pyramid_written(city), sig, "build-pyramid", city, "--side-m", "400", "--levels", "3", "--px", "64"
    )

    _assert_stopped_by(sig, code, err, "build-pyramid")
    assert (city / "pyramid.h5").read_bytes() == previous
    with PyramidReader(city / "pyramid.h5") as pyr:
        assert pyr.grid.levels == 2
    _assert_temporaries_harmless(sig, city)
    write_text(city / "pyramid.h5", "the next write of the file")
    assert not list(city.glob("*.partial")) and not list(city.glob(".*.partial"))  # the killed writer's are gone


# ----------------------------------------------------------------------------- train and --resume
def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The final weights in each file of a run that holds them."""
    return {LAST: load_file(run / LAST), BEST: load_file(run / BEST), TRAIN_STATE: load_train_state(run / TRAIN_STATE)["model"]}


def _assert_same_run(run: Path, reference: Path) -> None:
    """Same log (steps, losses, validation metrics) and bit-identical weights in every file."""
    assert untimed_records(run) == untimed_records(reference)
    ours, theirs = _weights(run), _weights(reference)
    for name, a in ours.items():
        b = theirs[name]
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), name


@pytest.mark.parametrize("sig", SIGNALS)
def test_killed_training_resumes_to_the_same_model(short_run, tiny_city, tmp_path, sig):
    """Killed after its first checkpoint (step 2 of 6), then resumed: the uninterrupted run, bit for bit."""
    run = tmp_path / "run"

    code, err = _kill_when(
        lambda: (run / TRAIN_STATE).exists(), sig, "train", tiny_city, "--config", short_run.parent / "run.yaml", "--out", run
    )

    _assert_stopped_by(sig, code, err, "train")
    _assert_temporaries_harmless(sig, run)
    # A kill between the two writes of a checkpoint leaves last.safetensors one checkpoint ahead
    # of train_state.pt: make it so, the resumed run must not depend on it.
    shutil.copy(short_run / LAST, run / LAST)
    assert train_in_process(tiny_city, "--out", run, "--resume") == 0
    _assert_same_run(run, short_run)


# ----------------------------------------------------------------------------- determinism
def test_sigterm_to_the_process_group_stops_training_and_its_loader_workers(tiny_city, tmp_path):
    """As a terminal or a scheduler stops a job: every process of the group gets SIGTERM. Only the
    one-line notice (no "DataLoader worker is killed" traceback), and no worker is left behind."""
    run = tmp_path / "run"
    config = write_run_config(tmp_path, steps=300, val_every=300, workers=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoomloc", "train", str(tiny_city), "--config", str(config), "--out", str(run), "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not (run / "metrics.jsonl").exists():  # logged after 10 steps: the workers are loading
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert (proc.returncode, err) == (128 + signal.SIGTERM, "zoomloc train: interrupted\n")
    with pytest.raises(ProcessLookupError):  # the group is empty: the workers are gone too
        os.killpg(proc.pid, 0)


# The worker's side of a batch's hand-over (torch passes tensors as file descriptors, which a thread of
# the worker sends): the main process connects to take one, then stops before the handshake is done.
HANDOVER_CUT = """
import os, socket, sys
from multiprocessing import resource_sharer
from zoomloc.data.photos import quiet_on_sigterm
quiet_on_sigterm(0)
resource_sharer.DupFd(os.open(os.devnull, os.O_RDONLY))
with socket.socket(socket.AF_UNIX) as main_process:
    main_process.connect(resource_sharer._resource_sharer._address)
resource_sharer.stop(timeout=30)  # served after that connection: its error has been reported by now
try:
    raise ValueError("a bug of the worker's own")
except ValueError:
    sys.excepthook(*sys.exc_info())
"""


def test_a_loader_worker_is_silent_when_the_main_process_stops_while_taking_a_batch():
    """The group's SIGTERM can stop the main process in the middle of taking a batch from a worker,
    whose sending thread then finds the connection broken: that is the main process's own stop, which
    it reports, so the worker prints nothing of it (the CI once saw its traceback); other errors still print."""
    out = subprocess.run([sys.executable, "-c", HANDOVER_CUT], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("Traceback") == 1 and out.stderr.endswith("ValueError: a bug of the worker's own\n"), out.stderr


def test_evaluation_is_the_same_for_the_same_checkpoint(short_run, tiny_city, tmp_path):
    """Two evaluations of one checkpoint: the same metrics (all but timings) and the same per-query errors.

    On 24 of the test photos: the evaluation's fixed costs (an index build, latency queries) stay small.
    """
    city = tmp_path / "city"
    city.mkdir()
    for name in ("streetview", "pyramid.h5"):
        (city / name).symlink_to(tiny_city / name)
    split = pd.read_csv(tiny_city / "split.csv", dtype=str)
    split[split["split"] == "test"].head(24).to_csv(city / "split.csv", index=False)
    outs = [tmp_path / name / "metrics.json" for name in ("a", "b")]
    for out in outs:
        assert main(["evaluate", str(city), "--model", str(short_run), "--out", str(out), "--quiet"]) == 0
    a, b = ({k: v for k, v in json.loads(out.read_text()).items() if k not in TIMING_KEYS} for out in outs)
    assert a == b and a["n_queries"] == 24
    assert (outs[0].parent / "errors.csv").read_bytes() == (outs[1].parent / "errors.csv").read_bytes()


# ----------------------------------------------------------------------------- real photos
def _variants(photo: Path, folder: Path) -> list[Path]:
    """``photo`` stored rotated with EXIF orientation 6 (lossless), and cut to a strip and a column."""
    upright = load_photo(photo)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the pixels are stored turned the other way
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.png", exif=exif)
    w, h = upright.size
    upright.crop((0, h // 2, w, h // 2 + 48)).save(folder / "strip.jpg")
    upright.crop((w // 2, 0, w // 2 + 40, h)).save(folder / "column.png")
    return [folder / "rotated.png", folder / "strip.jpg", folder / "column.png"]


@pytest.mark.realdata
def test_every_real_photo_localizes(realdata, short_run, tiny_city, tmp_path, capfd):
    """Phone, camera and broken-EXIF JPEGs from 16×16 to 3264×2448, plus odd crops and an EXIF rotation."""
    photos = sorted((realdata / "streetview").glob("*/*.jpg"))
    variants = _variants(photos[-1], tmp_path)

    code = main(["localize", *map(str, photos + variants), "--model", str(short_run), "--city", str(tiny_city), "--json", "--quiet"])

    out, err = capfd.readouterr()
    assert (code, err) == (0, "")
    records = {r["image"]: r for r in map(json.loads, out.splitlines())}
    assert list(records) == [str(p) for p in photos + variants]
    upright, rotated = records[str(photos[-1])], records[str(variants[0])]
    gps = {"image": None, "error_m": None, "inside_map": None, "warnings": None}  # what the GPS tells (the variant has none)
    assert {**rotated, **gps} == {**upright, **gps}
