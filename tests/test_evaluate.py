"""``zoomloc evaluate``: metrics.json follows its schema and agrees with the per-query errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from zoomloc.cli.main import main
from zoomloc.data.samples import Samples
from zoomloc.evaluation.evaluate import accuracy
from zoomloc.evaluation.metrics import RECALL_AT_1_M
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import geodesic_m
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.inference.localize import Localizer


@pytest.fixture(scope="module")
def evaluated(trained_run, tiny_city, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "metrics.json"
    assert (
        main(["evaluate", str(tiny_city), "--model", str(trained_run), "--split", "test", "--beam", "2", "--out", str(out), "--quiet"]) == 0
    )
    return out


def test_metrics_schema(evaluated, tiny_city):
    m = json.loads(evaluated.read_text())
    split = pd.read_csv(tiny_city / "split.csv", dtype={"image_id": str})
    assert m["model"] == "zoom" and m["split"] == "test" and m["beam"] == 2
    assert m["n_queries"] == int((split["split"] == "test").sum())
    assert list(m["recall_at_1"]) == [str(d) for d in RECALL_AT_1_M]
    assert list(m["recall_at_5"]) == ["50", "100"]
    assert len(m["step_accuracy"]) == 2  # the tiny city's grid has 2 levels
    assert m["step_accuracy"][0] >= m["step_accuracy"][1]  # a path right at level 2 is right at level 1
    tf = m["teacher_forced"]
    assert len(tf["step_accuracy"]) == len(tf["true_child_rank"]) == 2
    assert all(0 <= r <= 15 for r in tf["true_child_rank"])  # k = 4: ranks 0..15
    for d in ("50", "100"):
        assert m["recall_at_5"][d] >= m["recall_at_1"][d]
    assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p95"]
    assert m["peak_rss_mb"] > 0 and m["index_build_s"] > 0
    assert (evaluated.parent / "error_cdf.png").stat().st_size > 0
    # The map ablation: the same photos over views shuffled among each level's cells.
    ablation = m["map_ablation"]
    assert ablation["seed"] == 0 and list(ablation["recall_at_1"]) == list(m["recall_at_1"])
    shuffled_tf = ablation["teacher_forced"]["step_accuracy"]
    assert shuffled_tf[0] == pytest.approx(tf["step_accuracy"][0])  # the first step sees the region's one view, unshuffled
    assert shuffled_tf[1] != pytest.approx(tf["step_accuracy"][1])  # the second reads its parent's view, now another cell's


def test_shuffled_views_are_each_level_permuted_and_seeded(trained_run, tiny_city, tmp_path):
    from zoomloc.models.embeddings import cached_embeddings

    loc = Localizer.load(trained_run, CityDir(tiny_city).pyramid_path, cache_dir=tmp_path, progress=False)
    with PyramidReader(CityDir(tiny_city).pyramid_path) as pyr:
        sat = cached_embeddings(loc.model.encoders, pyr, tmp_path, progress=False)
    a, b, c = sat.shuffled(0), sat.shuffled(0), sat.shuffled(1)
    for real, one, same, other in zip(
        [*sat.levels, sat.terminal], [*a.levels, a.terminal], [*b.levels, b.terminal], [*c.levels, c.terminal]
    ):
        assert torch.equal(one, same) and (len(real) == 1 or not torch.equal(one, other))
        assert torch.equal(one.sort(0).values, real.sort(0).values)  # the same views, other cells
        assert len(real) == 1 or not torch.equal(one, real)


def test_teacher_forced_steps_agree_with_greedy_decoding(trained_run, tiny_city, tmp_path):
    """The one-pass teacher-forced policy and the cached step-by-step decode are the same function.

    The first step starts from the region either way, so both accuracies must match; a greedy
    path right to level 2 had the true parent at level 2, so free-running can never beat
    teacher forcing there. The checks run per query, on the evaluated split.
    """
    city = CityDir(tiny_city)
    loc = Localizer.load(trained_run, city.pyramid_path, cache_dir=tmp_path, progress=False)
    samples = Samples.from_city(city, "test", loc.model.grid)
    street = loc.embed_samples(samples, workers=0)
    _, m = accuracy(loc, street, samples, beam=1)
    tf = loc.index.teacher_forced(street, samples.paths)
    assert m["teacher_forced"] == tf
    assert tf["step_accuracy"][0] == pytest.approx(m["step_accuracy"][0])
    assert m["step_accuracy"][1] <= tf["step_accuracy"][1] + 1e-9


def test_recall_and_errors_agree_with_the_per_query_table(evaluated, tiny_city):
    m = json.loads(evaluated.read_text())
    table = pd.read_csv(evaluated.parent / "errors.csv", dtype={"image_id": str})
    meta = pd.read_csv(tiny_city / "streetview" / "metadata.csv", dtype={"image_id": str}).set_index("image_id")
    truth = meta.loc[table["image_id"]]
    np.testing.assert_allclose(table["true_lon"], truth["lon"])
    errors = geodesic_m(table["pred_lon"], table["pred_lat"], truth["lon"], truth["lat"])
    np.testing.assert_allclose(table["error_m"], errors, rtol=1e-9)
    for d, value in m["recall_at_1"].items():
        assert value == pytest.approx(100 * np.mean(errors <= float(d)))
    assert m["median_error_m"] == pytest.approx(np.median(errors))


def test_references_are_measured_on_the_same_photos(evaluated, trained_run, tiny_city, tmp_path):
    """The random cell and the nearest training photo, beside the model: their recalls agree with their
    per-query errors in errors.csv, and the nearest photo is left out where it would find itself."""
    m = json.loads(evaluated.read_text())
    table = pd.read_csv(evaluated.parent / "errors.csv", dtype={"image_id": str})
    assert set(m["references"]) == {"nearest_photo", "random"}
    for name, ref in m["references"].items():
        assert ref["n_queries"] == m["n_queries"] and ref["split"] == "test"
        for d, value in ref["recall_at_1"].items():
            assert value == pytest.approx(100 * np.mean(table[f"{name}_error_m"] <= float(d)))
    # tiny_city's test photos have training neighbours a few metres away (8 m blocks, no buffer).
    assert m["references"]["nearest_photo"]["median_error_m"] < m["references"]["random"]["median_error_m"]

    on_train = tmp_path / "train" / "metrics.json"
    assert main(["evaluate", str(tiny_city), "--model", str(trained_run), "--split", "train", "--out", str(on_train), "--quiet"]) == 0
    assert set(json.loads(on_train.read_text())["references"]) == {"random"}
    bare = tmp_path / "bare" / "metrics.json"
    assert main(["evaluate", str(tiny_city), "--model", str(trained_run), "--no-references", "--out", str(bare), "--quiet"]) == 0
    assert "references" not in json.loads(bare.read_text())
    assert list(pd.read_csv(bare.parent / "errors.csv").columns) == ["image_id", "true_lon", "true_lat", "pred_lon", "pred_lat", "error_m"]


def test_bad_beam_is_a_user_error(trained_run, tiny_city, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", str(tiny_city), "--model", str(trained_run), "--beam", "0", "--out", str(out)]) == 2
    assert "--beam" in capsys.readouterr().err and not out.exists()


def _peak_in_child() -> float:
    from zoomloc.evaluation.evaluate import peak_rss_mb

    return peak_rss_mb()


def test_peak_memory_of_an_evaluation_alone_is_its_own():
    """The benchmark evaluates each model in a process of its own: its peak must not include the
    parent's (getrusage's ru_maxrss would: it survives exec), before or after the parent's peak."""
    from zoomloc.evaluation.evaluate import peak_rss_mb
    from zoomloc.pipelines.benchmark import alone

    before = alone(_peak_in_child)
    big = np.ones(800 * 2**20 // 8)  # 800 MB held by the parent, then freed
    big[::4096] = 2.0  # touched, so resident
    del big
    parent = peak_rss_mb()
    after = alone(_peak_in_child)
    assert 0 < after < parent - 600, (after, parent)  # without the parent's 800 MB
    assert abs(after - before) < 100, (before, after)


def test_recall_intervals_hold_the_estimate_and_narrow_with_more_queries():
    from zoomloc.evaluation.metrics import summarize_errors

    rng = np.random.default_rng(0)
    few, many = summarize_errors(rng.exponential(100, 200)), summarize_errors(rng.exponential(100, 20000))
    for m in (few, many):
        for d, (lo, hi) in m["recall_at_1_ci95"].items():
            assert lo <= m["recall_at_1"][d] <= hi
    width = {name: m["recall_at_1_ci95"]["50"][1] - m["recall_at_1_ci95"]["50"][0] for name, m in (("few", few), ("many", many))}
    assert width["many"] < width["few"] / 5  # √100 = 10 times narrower, roughly
    # 50 m of an exponential of mean 100 m: 39.3 % within; 20000 queries pin it to about ±0.7 points.
    lo, hi = many["recall_at_1_ci95"]["50"]
    assert lo < 100 * (1 - np.exp(-0.5)) < hi


def test_intervals_resample_whole_captures_when_photos_come_in_them():
    """28 captures of 50 photos each, every capture right or wrong as a whole: the recall is known to
    ±9 points or so (28 draws), not to the ±2 points that 1400 independent photos would give."""
    from zoomloc.evaluation.metrics import summarize_errors

    rng = np.random.default_rng(1)
    captures = np.repeat(rng.permutation(28), 50)
    errors = np.where((rng.random(28) < 0.4)[captures], 10.0, 500.0)
    by_capture, by_photo = summarize_errors(errors, captures=captures), summarize_errors(errors)
    assert by_capture["recall_at_1_ci95_resamples"] == "captures" and by_photo["recall_at_1_ci95_resamples"] == "queries"
    width = {}
    for name, m in (("capture", by_capture), ("photo", by_photo)):
        lo, hi = m["recall_at_1_ci95"]["50"]
        assert lo <= m["recall_at_1"]["50"] <= hi
        width[name] = hi - lo
    assert width["capture"] > 4 * width["photo"]
    alone = summarize_errors(errors, captures=np.arange(len(errors)))  # each photo its own capture
    assert alone["recall_at_1_ci95"] == by_photo["recall_at_1_ci95"] and alone["recall_at_1_ci95_resamples"] == "queries"
