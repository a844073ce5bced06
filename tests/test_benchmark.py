"""``zoomloc benchmark`` with ``configs/bench_quick.yaml``: the report's structure, both models above the floor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO  # tests/ is on sys.path under pytest
from data_prep.split import SplitConfig, split_city
from zoomloc.benchmark import BenchmarkConfig
from zoomloc.cli import main
from zoomloc.config import load_yaml
from zoomloc.metrics import RECALL_AT_1_M, RECALL_AT_5_M
from zoomloc.pyramid import PyramidSpec, build_pyramid

QUICK = REPO / "configs" / "bench_quick.yaml"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "quick"
    assert main(["benchmark", "--config", str(QUICK), "--out", str(out), "--quiet"]) == 0
    return out


def test_results_hold_both_models_the_floor_and_the_budget(bench):
    results = json.loads((bench / "results.json").read_text())
    assert results["reused"] == []  # the first call ran every stage
    for name in ("zoom", "retrieval", "nearest_photo", "random"):
        m = results[name]
        assert m["model"] == name.replace("_", " ") and m["split"] == "test" and m["n_queries"] > 0
        assert set(m["recall_at_1"]) == {str(d) for d in RECALL_AT_1_M}
        assert set(m["recall_at_5"]) == {str(d) for d in RECALL_AT_5_M}
    assert len(results["zoom"]["step_accuracy"]) == 2 and "step_accuracy" not in results["retrieval"]
    assert set(results["zoom"]["by_beam"]) == {"1", "4"} and "by_beam" not in results["retrieval"]
    assert results["zoom"]["by_beam"]["1"]["recall_at_1"] == results["zoom"]["recall_at_1"]  # the benchmark decodes greedily
    assert results["zoom"]["n_queries"] == results["retrieval"]["n_queries"] == results["random"]["n_queries"]
    assert results["nearest_photo"]["n_queries"] == results["random"]["n_queries"]
    seen = results["test_cells_with_training_photos"]
    assert len(seen) == 2 and all(0 <= v <= 100 for v in seen)
    assert seen[0] >= seen[1]  # a cell holding training photos lies in a parent that holds them
    assert set(results["train_time_s"]) == {"zoom", "retrieval"}
    runs = results["config"]["runs"]
    assert runs["zoom"]["train"]["steps"] == runs["retrieval"]["train"]["steps"]
    assert str(runs["zoom"]["train"]["steps"]) in results["budget"]
    for name in ("zoom", "retrieval"):  # both learned something: better than guessing a cell
        assert results[name]["recall_at_1"]["100"] > results["random"]["recall_at_1"]["100"]
        assert results[name]["median_error_m"] < results["random"]["median_error_m"]
    assert (bench / "error_cdf.png").stat().st_size > 0


def test_report_tables_every_figure_and_the_paper_margins(bench):
    results = json.loads((bench / "results.json").read_text())
    report = (bench / "report.md").read_text()
    z, r = results["zoom"], results["retrieval"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in report.splitlines() if line.startswith("| R@")}
    assert len(rows) == len(RECALL_AT_1_M) + len(RECALL_AT_5_M) + 2  # + beam 4 at 50 and 100 m
    assert rows["R@1 within 100 m, zoom with beam 4 (%)"][:2] == [f"{z['by_beam']['4']['recall_at_1']['100']:.1f}", "–"]
    fifty = rows["R@1 within 50 m (%)"]

    def cell(m: dict) -> str:  # the recall and its bootstrap interval
        lo, hi = m["recall_at_1_ci95"]["50"]
        assert lo <= m["recall_at_1"]["50"] <= hi
        return f"{m['recall_at_1']['50']:.1f} ({lo:.1f}–{hi:.1f})"

    assert fifty[:3] == [cell(z), cell(r), cell(results["nearest_photo"])]
    assert fifty[4] == f"{z['recall_at_1']['50'] - r['recall_at_1']['50']:+.1f}" and fifty[5] == "+5.5"
    assert rows["R@1 within 100 m (%)"][5] == "+9.6"
    levels = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in report.splitlines() if line.startswith("| ")}
    assert len(levels["free-running: path right down to this level (%)"]) == 2
    assert [float(v) for v in levels["test photos whose cell holds training photos (%)"]] == pytest.approx(
        results["test_cells_with_training_photos"], abs=0.05
    )
    for label in ("median error", "latency", "peak memory", "index build", "training time", "## Targets", "## Machine"):
        assert label in report


def test_second_run_reuses_the_trained_models(bench, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in bench.glob("*/best.safetensors")}
    assert main(["benchmark", "--config", str(QUICK), "--out", str(bench), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train zoom: already there" in out and "evaluate retrieval: already there" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and len(stamps) == 2
    results = json.loads((bench / "results.json").read_text())
    assert results["reused"] == ["city", "split", "pyramid", "train zoom", "evaluate zoom", "train retrieval", "evaluate retrieval"]
    assert "reused from an earlier call: city, split, pyramid, train zoom" in (bench / "report.md").read_text()


def test_unequal_budgets_are_refused(tmp_path, capsys):
    unequal = tmp_path / "retrieval.yaml"
    unequal.write_text((REPO / "configs" / "quick" / "retrieval.yaml").read_text().replace("steps: 60", "steps: 61"))
    config = tmp_path / "bench.yaml"
    config.write_text(QUICK.read_text().replace("quick/", f"{REPO / 'configs' / 'quick'}/").replace(
        f"retrieval: {REPO / 'configs' / 'quick'}/retrieval.yaml", f"retrieval: {unequal}"))
    assert main(["benchmark", "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "same budget" in err and str(unequal) in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.fixture()
def borrowed_city(tiny_city, tmp_path) -> Path:
    """A city folder with ``tiny_city``'s imagery and photos but no split or pyramid of its own."""
    city = tmp_path / "city"
    city.mkdir()
    for name in ("satellite", "streetview"):
        (city / name).symlink_to(tiny_city / name)
    return city


def test_a_split_made_with_other_settings_is_refused_not_reused(borrowed_city, tmp_path, capsys):
    """``--city`` with a split of other blocks would benchmark a split the config does not state."""
    split_city(borrowed_city, SplitConfig(block_m=20.0, buffer_m=0.0, fractions=(0.7, 0.15, 0.15)))
    before = (borrowed_city / "split.csv").read_bytes()
    assert main(["benchmark", "--config", str(QUICK), "--city", str(borrowed_city), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(borrowed_city / "split.csv") in err and "block_m 20 (the config's: 10)" in err and "\n" not in err
    assert (borrowed_city / "split.csv").read_bytes() == before and not (borrowed_city / "pyramid.h5").exists()


def test_a_pyramid_built_with_other_settings_is_refused_not_reused(borrowed_city, tmp_path, capsys):
    cfg = load_yaml(BenchmarkConfig, QUICK)
    split_city(borrowed_city, cfg.split)  # the config's own split: reused
    build_pyramid(borrowed_city, PyramidSpec(k=4, levels=2, side_m=300.0, terminal_m=None, px=16), progress=False)
    stamp = (borrowed_city / "pyramid.h5").stat().st_mtime_ns
    assert main(["benchmark", "--config", str(QUICK), "--city", str(borrowed_city), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(borrowed_city / "pyramid.h5") in err and "16 px" in err and "the config's 32 px" in err and "\n" not in err
    assert (borrowed_city / "pyramid.h5").stat().st_mtime_ns == stamp
    assert not (tmp_path / "out" / "zoom").exists()  # refused before any training


def test_any_city_folder_is_benchmarked_with_city(borrowed_city, tmp_path, capsys):
    """``--city``: the given folder is split and pyramided in place, and nothing is generated."""
    out = tmp_path / "out"
    assert main(["benchmark", "--config", str(QUICK), "--city", str(borrowed_city), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["city"] == str(borrowed_city) and not (out / "city").exists()
    cfg = load_yaml(BenchmarkConfig, QUICK)
    assert json.loads((borrowed_city / "split_areas.geojson").read_text())["split_config"]["block_m"] == cfg.split.block_m
    assert results["zoom"]["n_queries"] == results["random"]["n_queries"] > 0

    # Split anew (another seed, the config changed to match): the trained runs may have trained on
    # photos that are test photos now, so they are refused rather than reused.
    (borrowed_city / "split.csv").unlink()
    reseeded = tmp_path / "bench.yaml"
    reseeded.write_text(QUICK.read_text().replace("seed: 0}", "seed: 1}").replace("quick/", f"{REPO / 'configs' / 'quick'}/"))
    assert main(["benchmark", "--config", str(reseeded), "--city", str(borrowed_city), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(out / "zoom") in err and "another split" in err and "\n" not in err
