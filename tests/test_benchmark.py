"""``zoomloc benchmark`` with ``configs/bench_quick.yaml``: the report's structure, both models above the floor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO  # tests/ is on sys.path under pytest
from zoomloc.cli import main
from zoomloc.metrics import RECALL_AT_1_M, RECALL_AT_5_M

QUICK = REPO / "configs" / "bench_quick.yaml"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "quick"
    assert main(["benchmark", "--config", str(QUICK), "--out", str(out), "--quiet"]) == 0
    return out


def test_results_hold_both_models_the_floor_and_the_budget(bench):
    results = json.loads((bench / "results.json").read_text())
    assert results["reused"] == []  # the first call ran every stage
    for name in ("zoom", "retrieval", "random"):
        m = results[name]
        assert m["model"] == name and m["split"] == "test" and m["n_queries"] > 0
        assert set(m["recall_at_1"]) == {str(d) for d in RECALL_AT_1_M}
        assert set(m["recall_at_5"]) == {str(d) for d in RECALL_AT_5_M}
    assert len(results["zoom"]["step_accuracy"]) == 2 and "step_accuracy" not in results["retrieval"]
    assert results["zoom"]["n_queries"] == results["retrieval"]["n_queries"] == results["random"]["n_queries"]
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
    assert len(rows) == len(RECALL_AT_1_M) + len(RECALL_AT_5_M)
    fifty = rows["R@1 within 50 m (%)"]
    assert fifty[:2] == [f"{z['recall_at_1']['50']:.1f}", f"{r['recall_at_1']['50']:.1f}"]
    assert fifty[3] == f"{z['recall_at_1']['50'] - r['recall_at_1']['50']:+.1f}" and fifty[4] == "+5.5"
    assert rows["R@1 within 100 m (%)"][4] == "+9.6"
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
