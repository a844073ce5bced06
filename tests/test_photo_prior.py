"""The training photos as a second witness beside the map (zoomloc.inference.photo_prior)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from zoomloc.cli.main import main
from zoomloc.data.samples import Samples
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import ZoomGrid
from zoomloc.inference.local_match import RERANK
from zoomloc.inference.localize import Localizer
from zoomloc.inference.photo_prior import (
    FACING_AWAY,
    FIT_DEEPER_RERANKS,
    FIT_HEADINGS,
    PhotoDatabase,
    PhotoPriorConfig,
    PhotoPriorIndex,
    candidate_xy,
    combine,
    fit_photo_prior,
)
from zoomloc.models.base import Clues
from zoomloc.models.beam import BeamResult

# 4 levels of 4x4 over 2560 m: 10 m terminal cells, the grid's origin (west, north) at (500 000, 5 000 000).
GRID = ZoomGrid("EPSG:32632", 500_000.0, 5_000_000.0, 2560.0, k=4, levels=4)


def _result(grid: ZoomGrid, xy: list[tuple[float, float]], probs: list[float]) -> BeamResult:
    """A model's search result: candidates at the centres of the cells holding ``xy``, with ``probs``."""
    xy = np.array(xy)
    paths = grid.path_of_xy(xy[:, 0], xy[:, 1])
    p = torch.tensor(probs)
    return BeamResult(torch.as_tensor(paths), p.log(), p[:, None].pow(1 / grid.levels).repeat(1, grid.levels))


def _near(x: float, y: float, n: int, spread: float, seed: int = 0) -> np.ndarray:
    return np.array([x, y]) + np.random.default_rng(seed).uniform(-spread, spread, (n, 2))


def test_the_photos_outweigh_an_unsure_model_and_not_a_sure_one():
    here, there = (500_105.0, 4_999_105.0), (501_505.0, 4_998_005.0)  # 1.8 km apart
    photos = _near(*there, n=8, spread=2.0)  # eight photos agree on one place
    sims = np.linspace(0.9, 0.8, 8)
    unsure, sure = _result(GRID, [here], [0.2]), _result(GRID, [here], [0.95])
    cfg = PhotoPriorConfig(neighbours=8, temperature=0.05, weight=0.3)  # 0.3 of photos against 0.14 or 0.67 of the model
    for model, expected in ((unsure, there), (sure, here)):
        answer = combine(GRID, model, photos, sims, cfg, topk=2)
        assert np.linalg.norm(candidate_xy(GRID, answer)[0] - expected) < GRID.terminal_m
    # Weight 0 is the model alone: its own cell centre, probability and path.
    alone = combine(GRID, unsure, photos, sims, PhotoPriorConfig(weight=0.0), topk=1)
    assert torch.equal(alone.paths, unsure.paths) and np.allclose(alone.log_probs, unsure.log_probs)
    assert np.allclose(candidate_xy(GRID, alone), candidate_xy(GRID, unsure))


def test_photos_beside_the_models_cell_merge_into_one_answer_at_their_weighted_place():
    cell_centre = candidate_xy(GRID, _result(GRID, [(500_105.0, 4_999_105.0)], [0.6]))[0]
    photos = cell_centre + np.array([[4.0, -3.0], [4.0, -3.0]])  # two photos 5 m from the centre, inside the 10 m cell
    model = _result(GRID, [tuple(cell_centre)], [0.6])
    answer = combine(GRID, model, photos, np.array([0.9, 0.9]), PhotoPriorConfig(neighbours=2, weight=0.5), topk=3)
    assert len(answer.paths) == 1  # one place, one answer
    assert float(answer.log_probs.exp()[0]) == pytest.approx(0.5 * 0.6 + 0.5)  # the model's share and the photos'
    expected = (0.3 * cell_centre + 0.5 * photos[0]) / 0.8  # pulled towards where the photos were taken
    assert np.allclose(candidate_xy(GRID, answer)[0], expected, atol=1e-3)


def test_answers_come_best_first_keep_every_candidates_mass_once_and_multiply_their_steps_to_it():
    rng = np.random.default_rng(1)
    model_probs = rng.dirichlet(np.ones(6)) * 0.7
    model = _result(GRID, [tuple(p) for p in _near(501_000.0, 4_998_700.0, 6, 600.0)], list(model_probs))
    photos, sims = _near(501_200.0, 4_998_900.0, 16, 300.0, seed=2), rng.uniform(0.5, 0.9, 16)
    cfg = PhotoPriorConfig(temperature=0.05, weight=0.4)
    every = combine(GRID, model, photos, sims, cfg, topk=100)
    probs = every.log_probs.exp().numpy()
    assert probs.sum() == pytest.approx(0.6 * model_probs.sum() + 0.4, rel=1e-5)  # each candidate's mass in one answer
    assert np.all(np.diff(probs) <= 1e-6)
    assert np.allclose(every.step_probs.prod(1), probs, rtol=1e-5)
    xy = candidate_xy(GRID, every)
    assert GRID.contains_xy(xy[:, 0], xy[:, 1]).all()
    first = combine(GRID, model, photos, sims, cfg, topk=3)
    assert torch.equal(first.paths, every.paths[:3]) and torch.allclose(first.log_probs, every.log_probs[:3])


def test_the_database_keeps_the_photos_on_the_map_and_finds_the_most_similar():
    lon, lat = GRID.to_lonlat(np.array([500_100.0, 500_200.0, 400_000.0]), np.array([4_999_900.0, 4_999_800.0, 4_999_900.0]))
    street = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    db = PhotoDatabase.of(street, lon, lat, GRID)
    assert len(db) == 2  # the third lies 100 km west of the map
    sims, rows = db.nearest(torch.tensor([[0.1, 1.0], [3.0, 0.0]]), k=5)
    assert rows.shape == (2, 2) and rows[:, 0].tolist() == [1, 0]
    assert sims[1, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="on the map"):
        PhotoDatabase.of(street[2:], lon[2:], lat[2:], GRID)


def test_the_database_compares_photos_and_queries_by_the_models_place_embedding():
    """Photos and queries both go through ``place``: here it drops a third feature that would decide otherwise."""
    lon, lat = GRID.to_lonlat(np.array([500_100.0, 500_200.0]), np.array([4_999_900.0, 4_999_800.0]))
    street, query = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 10.0]]), torch.tensor([[0.2, 1.0, 0.0]])
    assert PhotoDatabase.of(street, lon, lat, GRID).nearest(query, k=1)[1][0, 0] == 0
    db = PhotoDatabase.of(street, lon, lat, GRID, place=lambda x: x[:, :2])
    assert db.embeddings.shape == (2, 2) and torch.allclose(db.embeddings.norm(dim=1), torch.ones(2))
    assert db.nearest(query, k=1)[1][0, 0] == 1


def test_a_photo_facing_away_from_the_query_ranks_after_every_photo_facing_its_way():
    """The most similar photo faces the other way: with a heading limit it comes last; a photo or a query whose
    heading is unknown (NaN) is never taken to face away."""
    lon, lat = GRID.to_lonlat(np.array([500_100.0, 500_200.0, 500_300.0]), np.array([4_999_900.0] * 3))
    street = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.5, 0.866]])
    db = PhotoDatabase.of(street, lon, lat, GRID, heading_deg=np.array([185.0, 350.0, np.nan]))
    query = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert db.nearest(query, k=3)[1].tolist() == [[0, 1, 2]] * 2
    sims, rows = db.nearest(query, k=3, clues=Clues(np.array([5.0, np.nan])), within_deg=45.0)
    assert rows.tolist() == [[1, 2, 0], [0, 1, 2]]
    assert sims[0, 2] == pytest.approx(1.0 - FACING_AWAY) and sims[1, 0] == pytest.approx(1.0)
    assert db.nearest(query, k=3, clues=Clues(np.array([5.0, 5.0])), within_deg=180.0)[1].tolist() == [[0, 1, 2]] * 2


def test_the_database_remembers_a_querys_neighbours_by_what_the_query_is(monkeypatch):
    """Asked again for the same photos (a part of them, fewer neighbours) the database answers from memory, as an
    evaluation asks for the best answer, the top 5 and each capture's track; a query whose heading changed is
    searched anew, and only it."""
    lon, lat = GRID.to_lonlat(np.array([500_100.0, 500_200.0, 500_300.0]), np.array([4_999_900.0] * 3))
    db = PhotoDatabase.of(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.5, 0.866]]), lon, lat, GRID, heading_deg=np.array([185.0, 350.0, 0.0]))
    queries, clues = torch.tensor([[1.0, 0.0], [0.6, 0.8]]), Clues(np.array([5.0, 90.0]))
    sims, rows = db.nearest(queries, k=3, clues=clues, within_deg=45.0)
    searched: list[int] = []
    search = PhotoDatabase._search
    monkeypatch.setattr(PhotoDatabase, "_search", lambda self, street, *args: searched.append(len(street)) or search(self, street, *args))
    again_sims, again_rows = db.nearest(queries[1:], k=2, clues=clues[1:], within_deg=45.0)
    assert searched == [] and again_rows.tolist() == rows[1:, :2].tolist() and np.array_equal(again_sims, sims[1:, :2])
    turned = db.nearest(queries, k=3, clues=Clues(np.array([5.0, 185.0])), within_deg=45.0)[1]
    assert searched == [1] and turned[0].tolist() == rows[0].tolist() and turned[1, 0] == 0  # now faces the first photo's way
    assert db.nearest(queries, k=3, clues=clues, within_deg=45.0)[1].tolist() == rows.tolist() and searched == [1]


@pytest.fixture(scope="module")
def witnessed(trained_run, tiny_city):
    """The tiny city's trained zoom, its training photos and its val and test photos' embeddings."""
    city = CityDir(tiny_city)
    loc = Localizer.load(trained_run, city.pyramid_path, progress=False)
    grid = loc.model.grid
    split = {s: Samples.from_city(city, s, grid) for s in ("train", "val", "test")}
    street = {s: loc.embed_samples(v, workers=0) for s, v in split.items()}
    return loc, PhotoDatabase.of(street["train"], split["train"].lon, split["train"].lat, grid), split, street


def test_the_photo_witness_alone_is_the_nearest_training_photo(witnessed):
    loc, db, split, street = witnessed
    grid = loc.model.grid
    index = PhotoPriorIndex(loc.index, db, grid, PhotoPriorConfig(neighbours=1, weight=1.0))
    xy = np.stack([candidate_xy(grid, r)[0] for r in index.search(street["test"], beam=1, topk=1)])
    cos = torch.nn.functional.normalize(street["test"], dim=-1) @ torch.nn.functional.normalize(street["train"], dim=-1).T
    assert np.allclose(xy, split["train"].xy(grid)[cos.argmax(1).numpy()], atol=1e-3)


def test_the_fit_picks_the_best_pair_tried_on_val_and_the_model_alone_is_among_them(witnessed):
    loc, db, split, street = witnessed
    grid = loc.model.grid
    cfg, tried = fit_photo_prior(loc.index, db, grid, street["val"], split["val"].xy(grid), within_m=50.0)
    assert max(tried.values()) == tried[f"weight {cfg.weight:g}, temperature {cfg.temperature:g}"]
    model_alone = [r.paths[0].numpy() for r in loc.index.search(street["val"], beam=1, topk=1)]
    x, y = grid.centre_xy_of_path(np.stack(model_alone))
    share = 100 * np.mean(np.hypot(x - split["val"].xy(grid)[:, 0], y - split["val"].xy(grid)[:, 1]) <= 50.0)
    assert tried["weight 0, temperature 0.01"] == pytest.approx(share)
    # The val photos' headings are known, the database's are not (NaN): no limit changes a lookup, so the fit
    # keeps any heading and finds the same shares.
    headed, tried_headed = fit_photo_prior(
        loc.index, db, grid, street["val"], split["val"].xy(grid), within_m=50.0, clues=Clues(split["val"].heading_deg)
    )
    assert headed.heading_deg is None and tried_headed == tried


def test_evaluate_reports_the_model_with_its_photos(trained_run, tiny_city, tmp_path):
    out = tmp_path / "metrics.json"
    argv = ["evaluate", str(tiny_city), "--model", str(trained_run), "--out", str(out), "--with-photos", "--fuse", "captures", "--quiet"]
    assert main(argv) == 0
    m = json.loads(out.read_text())
    w = m["with_photos"]
    assert w["photos"] == int((pd.read_csv(tiny_city / "split.csv")["split"] == "train").sum())
    assert set(w["config"]) == {"neighbours", "temperature", "weight", "heading_deg", "rerank", "local_head"}
    assert list(w["recall_at_1"]) == list(m["recall_at_1"])
    assert w["config"]["heading_deg"] in FIT_HEADINGS and w["config"]["rerank"] in (0, RERANK, *FIT_DEEPER_RERANKS)
    assert w["config"]["rerank"] or not w["config"]["local_head"]  # the head describes the maps a re-ranking matches
    assert list(w["lookup"]["recall_at_1"]) == list(m["recall_at_1"])  # the photo the witness looks up, alone
    table = pd.read_csv(out.parent / "errors.csv", dtype={"image_id": str})
    assert w["recall_at_1"]["50"] == pytest.approx(100 * np.mean(table["with_photos_error_m"] <= 50))
    assert w["fused"]["recall_at_1"]["50"] == pytest.approx(100 * np.mean(table["with_photos_fused_error_m"] <= 50))
