"""``zoomloc benchmark`` with ``configs/bench_quick.yaml``: three protocols, the report's structure, reuse and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO  # tests/ is on sys.path under pytest

from data_prep.split import SplitConfig, split_city
from zoomloc.cli.main import main
from zoomloc.core.config import load_yaml
from zoomloc.data.samples import Samples
from zoomloc.evaluation.metrics import RECALL_AT_1_M, RECALL_AT_5_M
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader, PyramidSpec, build_pyramid
from zoomloc.pipelines.benchmark import COLUMNS, MEASURES, TRAINED_REFERENCE, BenchmarkConfig

QUICK = REPO / "configs" / "bench_quick.yaml"
pytestmark = pytest.mark.slow  # the benchmark end to end, three protocols: minutes (make test-all, CI)
PROTOCOLS = ["sequence", "photo", "area"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "quick"
    assert main(["benchmark", "--config", str(QUICK), "--out", str(out), "--quiet"]) == 0
    return out


def test_results_hold_every_protocol_with_both_models_and_the_references(bench):
    results = json.loads((bench / "results.json").read_text())
    assert results["reused"] == []  # the first call ran every stage
    assert list(results["protocols"]) == PROTOCOLS and results["headline"] == "sequence"
    runs = results["config"]["runs"]
    assert runs["zoom"]["train"]["steps"] == runs["retrieval"]["train"]["steps"]
    assert str(runs["zoom"]["train"]["steps"]) in results["budget"]
    for protocol, r in results["protocols"].items():
        for name in COLUMNS:
            m = r[name]
            assert m["model"] == name.replace("_", " ") and m["split"] == "test" and m["n_queries"] == r["zoom"]["n_queries"] > 0
            assert set(m["recall_at_1"]) == {str(d) for d in RECALL_AT_1_M}
            assert set(m["recall_at_5"]) == {str(d) for d in RECALL_AT_5_M}
        assert "references" not in r["zoom"]  # tabled as columns of their own
        # Each model's nearest photo by its trained street embedding: retrieval's head trained, the frozen zoom's did not.
        assert TRAINED_REFERENCE in r["retrieval"] and TRAINED_REFERENCE not in r["zoom"]
        assert r["retrieval"][TRAINED_REFERENCE]["n_queries"] == r["zoom"]["n_queries"]
        assert len(r["zoom"]["step_accuracy"]) == 2 and "step_accuracy" not in r["retrieval"]
        assert set(r["zoom"]["by_beam"]) == {"1", "4"} and "by_beam" not in r["retrieval"]
        assert r["zoom"]["by_beam"]["1"]["recall_at_1"] == r["zoom"]["recall_at_1"]  # decoded greedily
        seen = r["test_cells_with_training_photos"]
        assert len(seen) == 2 and 0 <= seen[1] <= seen[0] <= 100  # a cell holding training photos lies in a parent that does
        assert set(r["train_time_s"]) == {"zoom", "retrieval"} and r["city"] == str(bench / protocol / "city")
    # Both models learned something where test photos lie beside training ones: better than guessing a cell. Not
    # asked of `sequence`: its three or so test captures of a 300 m city are at the floor after 60 steps, as the
    # bench city's new captures are for every method (benchmarks/results/bench/report.md).
    for protocol in ("photo", "area"):
        r = results["protocols"][protocol]
        for kind in ("zoom", "retrieval"):
            assert r[kind]["recall_at_1"]["100"] > r["random"]["recall_at_1"]["100"], (protocol, kind)
        assert r["zoom"]["median_error_m"] < r["random"]["median_error_m"]
    assert (bench / "error_cdf.png").stat().st_size > 0


def test_each_protocol_splits_its_own_city_folder_sharing_the_caches(bench):
    meta = CityDir(bench / "city").read_metadata().set_index("image_id")
    splits = {p: CityDir(bench / p / "city").read_split().set_index("image_id")["split"] for p in PROTOCOLS}
    per_sequence = {p: meta.join(s)[["sequence_id", "split"]].groupby("sequence_id")["split"].nunique() for p, s in splits.items()}
    assert (per_sequence["sequence"] == 1).all()  # whole captures go to one split
    assert (per_sequence["photo"] > 1).any()  # photos drawn at random: captures are cut
    for p in PROTOCOLS:
        recorded = json.loads((bench / p / "city" / "split_areas.geojson").read_text())["split_config"]
        assert recorded["by"] == p
        assert (bench / p / "city" / "embeddings").resolve() == (bench / "city" / "embeddings").resolve()
    assert not (bench / "city" / "split.csv").exists()
    # One street cache for the 3 protocols × 2 models and the nearest-photo references, one local cache for their witnesses.
    assert len(list((bench / "city" / "embeddings").glob("street_*.h5"))) == 1
    assert len(list((bench / "city" / "embeddings").glob("local_*.h5"))) == 1


def _table(report: str, header: str) -> dict[str, list[str]]:
    """The rows of the report's table whose header starts with ``header``: its cells after the first, by the first."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.split("|")[1:-1]]
        rows[cells[0].strip("*")] = cells[1:]
    return rows


def test_report_sets_the_protocols_side_by_side_then_each_in_full(bench):
    results = json.loads((bench / "results.json").read_text())
    report = (bench / "report.md").read_text()
    assert report.index("| **sequence** |") < report.index("| photo |") < report.index("| area |")  # the headline first, in bold
    overview, fused = (_table(report, header) for header in ("| protocol | its test photos |", "| protocol | zoom per photo |"))
    for protocol, r in results["protocols"].items():
        z, ret = r["zoom"]["recall_at_1"], r["retrieval"]["recall_at_1"]
        assert overview[protocol][2] == f"{z['50']:.1f} / {z['100']:.1f}"
        assert overview[protocol][-1] == f"{z['50'] - ret['50']:+.1f} / {z['100'] - ret['100']:+.1f}"
        # Then each capture's test photos fused, beside each model's per-photo figure.
        zf, rf = r["zoom"]["fused"]["recall_at_1"], r["retrieval"]["fused"]["recall_at_1"]
        assert fused[protocol] == [f"{z['50']:.1f} / {z['100']:.1f}", f"{zf['50']:.1f} / {zf['100']:.1f}",
                                   f"{ret['50']:.1f} / {ret['100']:.1f}", f"{rf['50']:.1f} / {rf['100']:.1f}",
                                   f"{zf['50'] - rf['50']:+.1f} / {zf['100'] - rf['100']:+.1f}"]  # fmt: skip
        assert 0 < r["zoom"]["fused"]["fusion_ms_per_photo"] < r["zoom"]["fused"]["search_ms_per_photo"] + r["zoom"]["latency_ms"]["p50"]
    assert overview["paper, DC (photo protocol)"][2:4] == ["66.3 / 80.9", "60.8 / 71.3 (Sample4Geo)"]

    sections = report.split("\n## ")
    for protocol in PROTOCOLS:
        (section,) = [s for s in sections if s.startswith(f"`{protocol}`: {MEASURES[protocol]}")]
        r = results["protocols"][protocol]
        table = {
            line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in section.splitlines() if line.startswith("| ")
        }
        fifty = table["R@1 within 50 m (%)"]
        lo, hi = r["zoom"]["recall_at_1_ci95"]["50"]
        assert lo <= r["zoom"]["recall_at_1"]["50"] <= hi and fifty[0] == f"{r['zoom']['recall_at_1']['50']:.1f} ({lo:.1f}–{hi:.1f})"
        assert (fifty[-1] == "+5.5") == (protocol == "photo")  # the paper's margin next to the protocol it measured
        assert len(table["test photos whose cell holds training photos (%)"]) == 2
        fused = table["R@1 within 50 m, fused over captures (%)"]
        assert fused[0].startswith(f"{r['zoom']['fused']['recall_at_1']['50']:.1f} (")
        assert fused[1].startswith(f"{r['retrieval']['fused']['recall_at_1']['50']:.1f} (")
        targets = [line for line in section.splitlines() if line.startswith("- ")]
        # The protocol's own targets, then the fusion's (its gain, its margin, its time), then the map ablation's.
        assert len(targets) == {"sequence": 4 + 2 + 1, "photo": 6 + 3, "area": 2 + 1 + 1}[protocol]  # and the map ablation's
        trained = table["R@1 within 25 / 50 / 100 m, nearest photo by the model's trained street encoder (%)"]
        recall = r["retrieval"][TRAINED_REFERENCE]["recall_at_1"]
        assert trained[:2] == ["as the initial encoder's", " / ".join(f"{recall[d]:.1f}" for d in ("25", "50", "100"))]
        shuffled = table["R@1 within 50 / 100 m, views shuffled among the cells (%)"]
        assert (
            shuffled[0] == f"{r['zoom']['map_ablation']['recall_at_1']['50']:.1f} / {r['zoom']['map_ablation']['recall_at_1']['100']:.1f}"
        )
        assert all(line.startswith(("- met: ", "- **not met**, short by ", "- **not met**, over by ")) for line in targets)
    for label in ("median error", "latency", "peak memory", "index build", "training time", "## Time and machine"):
        assert label in report


def test_report_sets_each_model_beside_itself_with_its_training_photos(bench):
    results = json.loads((bench / "results.json").read_text())
    report = (bench / "report.md").read_text()
    witness = _table(report, "| protocol | zoom | zoom + photos |")
    pair = lambda recall: f"{recall['50']:.1f} / {recall['100']:.1f}"  # noqa: E731
    with PyramidReader(bench / "city" / "pyramid.h5") as pyramid:
        grid = pyramid.grid
    for protocol, r in results["protocols"].items():
        zp, rp, near = r["zoom"]["with_photos"], r["retrieval"]["with_photos"], r["nearest_photo"]["recall_at_1"]
        figures = (r["zoom"], zp, r["retrieval"], rp)  # each per photo → each capture's photos fused
        assert witness[protocol][:4] == [f"{pair(m['recall_at_1'])} → {pair(m['fused']['recall_at_1'])}" for m in figures]
        assert witness[protocol][-1] == f"{zp['recall_at_1']['50'] - near['50']:+.1f} / {zp['recall_at_1']['100'] - near['100']:+.1f}"
        train = Samples.from_city(CityDir(bench / protocol / "city"), "train", grid)
        assert zp["photos"] == rp["photos"] == len(train)  # every training photo on the map
        for m in (zp, rp):
            assert 0 <= m["config"]["weight"] <= 1 and m["val_recall_at_1_50"] >= 0
    (sequence,) = [s for s in report.split("\n## ") if s.startswith("`sequence`")]
    fifty = results["protocols"]["sequence"]["zoom"]["with_photos"]["recall_at_1"]["50"]
    assert f"| R@1 within 50 m, with the training photos (%) | {fifty:.1f} (" in sequence


def test_second_run_reuses_the_trained_models(bench, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in bench.glob("*/*/best.safetensors")}
    first = json.loads((bench / "results.json").read_text())
    assert main(["benchmark", "--config", str(QUICK), "--out", str(bench), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train zoom (sequence): already there" in out and "evaluate retrieval (area): already there" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and len(stamps) == 6
    results = json.loads((bench / "results.json").read_text())
    assert (
        results["reused"][:4] == ["city", "pyramid", "split by sequence", "train zoom (sequence)"] and len(results["reused"]) == 2 + 5 * 3
    )
    assert "reused from an earlier call: city, pyramid, split by sequence" in (bench / "report.md").read_text()
    # The stages are still timed as the first call ran them, so the report times the whole benchmark.
    assert results["stage_s"] == first["stage_s"] and len(first["stage_s"]) == len(results["reused"])
    assert results["protocols"]["area"]["train_time_s"] == first["protocols"]["area"]["train_time_s"]


def _config(tmp_path: Path, replace: dict[str, str]) -> Path:
    """``bench_quick.yaml`` with its run configs at absolute paths and the given text replaced."""
    text = QUICK.read_text().replace("quick/", f"{REPO / 'configs' / 'quick'}/")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "bench.yaml"
    config.write_text(text)
    return config


AREA_ONLY = {"protocols: [sequence, photo, area]": "protocols: [area]"}


def test_unequal_budgets_are_refused(tmp_path, capsys):
    unequal = tmp_path / "retrieval.yaml"
    unequal.write_text((REPO / "configs" / "quick" / "retrieval.yaml").read_text().replace("steps: 60", "steps: 61"))
    config = _config(tmp_path, {f"retrieval: {REPO / 'configs' / 'quick'}/retrieval.yaml": f"retrieval: {unequal}"})
    assert main(["benchmark", "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "same budget" in err and str(unequal) in err and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (
            {"protocols: [sequence, photo, area]": "protocols: [sequence, street]"},
            "key 'protocols[1]' must be one of 'area', 'photo', 'sequence', 'given', got 'street'",
        ),
        ({"protocols: [sequence, photo, area]": "protocols: [area, area]"}, "protocols must be distinct"),
        ({"seed: 0}": "seed: 0, by: photo}"}, "split.by: each protocol of `protocols` sets it"),
    ],
)
def test_bad_protocols_are_refused(tmp_path, capsys, replace, message):
    config = _config(tmp_path, replace)
    assert main(["benchmark", "--config", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(config) in err and "\n" not in err


@pytest.fixture()
def borrowed_city(tiny_city, tmp_path) -> Path:
    """A city folder with ``tiny_city``'s imagery and photos but no split or pyramid of its own."""
    city = tmp_path / "city"
    city.mkdir()
    for name in ("satellite", "streetview"):
        (city / name).symlink_to(tiny_city / name)
    return city


def test_a_split_made_with_other_settings_is_refused_not_reused(borrowed_city, tmp_path, capsys):
    """A protocol folder whose split has other blocks would benchmark a split the config does not state."""
    out = tmp_path / "out"
    area = CityDir(borrowed_city).sharing(out / "area" / "city")
    split_city(area.root, SplitConfig(block_m=20.0, buffer_m=0.0, fractions=(0.7, 0.15, 0.15)))
    before = area.split_csv.read_bytes()
    config = _config(tmp_path, AREA_ONLY)
    assert main(["benchmark", "--config", str(config), "--city", str(borrowed_city), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(area.split_csv) in err and "block_m 20 (the config's: 10)" in err and "\n" not in err
    assert area.split_csv.read_bytes() == before and not (out / "area" / "zoom").exists()


def test_a_pyramid_built_with_other_settings_is_refused_not_reused(borrowed_city, tmp_path, capsys):
    build_pyramid(borrowed_city, PyramidSpec(k=4, levels=2, side_m=300.0, terminal_m=None, px=16), progress=False)
    stamp = (borrowed_city / "pyramid.h5").stat().st_mtime_ns
    assert main(["benchmark", "--config", str(QUICK), "--city", str(borrowed_city), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(borrowed_city / "pyramid.h5") in err and "16 px" in err and "the config's 32 px" in err and "\n" not in err
    assert (borrowed_city / "pyramid.h5").stat().st_mtime_ns == stamp
    assert not (tmp_path / "out" / "sequence").exists()  # refused before any split or training


def test_any_city_folder_is_benchmarked_with_city(borrowed_city, tmp_path, capsys):
    """``--city``: the given folder gets the pyramid in place, each protocol folder links to it, nothing is generated."""
    out = tmp_path / "out"
    config = _config(tmp_path, AREA_ONLY)
    assert main(["benchmark", "--config", str(config), "--city", str(borrowed_city), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["city"] == str(borrowed_city) and not (out / "city").exists() and list(results["protocols"]) == ["area"]
    assert (out / "area" / "city" / "pyramid.h5").resolve() == (borrowed_city / "pyramid.h5").resolve()
    cfg = load_yaml(BenchmarkConfig, config)
    assert json.loads((out / "area" / "city" / "split_areas.geojson").read_text())["split_config"]["block_m"] == cfg.split.block_m
    assert not (borrowed_city / "split.csv").exists()  # the user's folder keeps its own split, if any
    r = results["protocols"]["area"]
    assert r["zoom"]["n_queries"] == r["random"]["n_queries"] == len(pd.read_csv(out / "area" / "zoom" / "test" / "errors.csv"))

    # Split anew (another seed, the config changed to match): the trained runs may have trained on
    # photos that are test photos now, so they are refused rather than reused.
    (out / "area" / "city" / "split.csv").unlink()
    reseeded = _config(tmp_path, {**AREA_ONLY, "seed: 0}": "seed: 1}"})
    assert main(["benchmark", "--config", str(reseeded), "--city", str(borrowed_city), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(out / "area" / "zoom") in err and "another split" in err and "\n" not in err
