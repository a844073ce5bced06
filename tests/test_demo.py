"""The embedded default: ``zoomloc demo`` end to end, ``localize`` without --model, the notebook.

All on a demo small enough for the tests (``tests/data/demo_tiny.yaml``: the same stages as
``configs/demo.yaml`` on a 300 m city, trained for 20 steps).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO

from zoomloc.cli.main import main
from zoomloc.inference.embedded import DEMO_DIR_ENV
from zoomloc.pipelines.demo import run_demo

TINY_DEMO = REPO / "tests" / "data" / "demo_tiny.yaml"
STAGES = ("city", "pyramid", "split", "model", "retrieval model", "evaluation", "retrieval evaluation")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, run_demo(out, TINY_DEMO, progress=False)


def test_demo_builds_evaluates_and_localizes_held_out_photos(demo):
    out, report = demo
    assert [block.split(":")[0] for block in report[: len(STAGES)]] == list(STAGES)
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_queries"] > 0
    evaluation = report[STAGES.index("evaluation")]
    assert f"{metrics['recall_at_1']['50']:5.1f}%" in evaluation  # the printed R@1 is the evaluation's
    # Then the zoom beside the retrieval baseline and the two references, on the same photos.
    rows = [re.match(r"  (\D+?) +([\d.]+) / +([\d.]+) / +([\d.]+) %", line).groups() for line in report[len(STAGES)].splitlines()[1:]]
    retrieval = json.loads((out / "retrieval" / "test" / "metrics.json").read_text())
    expected = {
        "zoom": metrics,
        "retrieval": retrieval,
        "zoom fused": metrics["fused"],
        "retrieval fused": retrieval["fused"],
        "zoom + photos": metrics["with_photos"],  # each model with its training photos as a second witness
        "retrieval + photos": retrieval["with_photos"],
        "zoom + photos fused": metrics["with_photos"]["fused"],
        "retrieval + photos fused": retrieval["with_photos"]["fused"],
        **{n.replace("_", " "): m for n, m in metrics["references"].items()},
    }
    assert [name for name, *_ in rows] == list(expected) and list(expected)[-2:] == ["nearest photo", "random"]
    for name, *recalls in rows:
        assert recalls == [f"{expected[name]['recall_at_1'][d]:.1f}" for d in ("25", "50", "100")]
    shown = report[-1]
    single, track = shown.split("localized as one track")
    # `show: 3` held-out photos (less those of the capture fused below them), then that capture, a line pair per photo
    n_single = int(re.match(r"(\d+) held-out test photos", single).group(1))
    assert single.count("distance to the true position") == n_single <= 3
    photos_in_track = int(re.search(r"capture of (\d+) test photos: \1 photos over", track).group(1))
    assert track.count("distance to the true position: fused") == photos_in_track > 1
    html = (out / "map.html").read_text()
    assert "L.imageOverlay" in html and "data:image/" in html  # the imagery, inlined
    assert "fused track" in html


def test_second_demo_run_reuses_every_stage(demo):
    out, _ = demo
    stamps = {p: p.stat().st_mtime_ns for p in (out / "model" / "best.safetensors", out / "test" / "metrics.json")}
    report = run_demo(out, TINY_DEMO, progress=False)
    assert report[: len(STAGES)] == [f"{stage}: already there" for stage in STAGES]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_localize_without_model_uses_the_embedded_default(demo, monkeypatch, capsys):
    out, _ = demo
    monkeypatch.setenv(DEMO_DIR_ENV, str(out))
    photo = next((out / "city" / "streetview" / "images").glob("*.jpg"))
    assert main(["localize", str(photo), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image"] == str(photo) and len(result["path"]) == 2  # the tiny demo's 2 zoom levels


def test_localize_without_default_says_how_to_build_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DEMO_DIR_ENV, str(tmp_path / "nothing"))
    photo = tmp_path / "photo.jpg"
    from PIL import Image

    Image.new("RGB", (64, 32), "grey").save(photo)
    assert main(["localize", str(photo), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "make demo" in err and str(tmp_path / "nothing") in err and "\n" not in err


def test_notebook_runs_top_to_bottom(demo, monkeypatch):
    """notebooks/localize_demo.ipynb on the tiny demo: no cell fails, the map and the figures render."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat

    out, _ = demo
    monkeypatch.setenv(DEMO_DIR_ENV, str(out))  # the kernel inherits the environment
    nb = nbformat.read(REPO / "notebooks" / "localize_demo.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o["text"] for o in outputs if o.output_type == "stream" and o["name"] == "stderr"]  # no warning either
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("leaflet" in h.lower() for h in html)  # the folium map, inline
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # photos vs cells, error CDF
    text = "".join(o.get("text", "") for o in outputs)
    assert "distance to the true position" in text and "median error" in text
    assert re.search(r"\d+ photos: median error \d+ m one by one, \d+ m fused", text)  # the capture as one track
    assert sum("fused track" in h for h in html) == 1
