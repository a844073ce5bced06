"""Photos matched location by location (zoomloc.inference.local_match) and the photo witness re-ranking by it."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import local_cache
from zoomloc.geo.citydir import CityDir
from zoomloc.inference import local_match, photo_prior
from zoomloc.inference.local_head import LocalHeadConfig, local_head
from zoomloc.inference.local_match import LocalHead, LocalMaps, candidate_scores, match_scores, unit_locations
from zoomloc.inference.localize import Localizer
from zoomloc.inference.photo_prior import FACING_AWAY, PhotoDatabase, fit_photo_prior
from zoomloc.models.base import Clues


def _unit(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_a_view_shifted_along_the_street_scores_above_the_same_features_scattered():
    """A map matched with itself scores 1; shifted by a column (the same place seen a few metres on) nearly 1;
    the same descriptors at shuffled locations far less (they are mutual nearest neighbours, but agree on no
    shift); an unrelated map least."""
    h, w, c = 4, 8, 16
    query = _unit((h, w, c), 0)
    shifted = torch.roll(query, 1, dims=1)
    scattered = query.reshape(h * w, c)[torch.randperm(h * w, generator=torch.Generator().manual_seed(1))].reshape(h, w, c)
    unrelated = _unit((h, w, c), 2)
    scores = match_scores(query[None], torch.stack([query, shifted, scattered, unrelated])[None])[0]
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx((w - 1) / w)  # the wrapped column lies a whole map away from the shift
    assert scores[1] > 2 * scores[2] and scores[2] > scores[3]


def test_unit_locations_lay_a_photos_crops_side_by_side():
    maps = torch.randn(2, 2, 16, 4, 8)  # two photos, two crops each, [C, h, w]
    units = unit_locations(maps)
    assert units.shape == (2, 4, 16, 16) and units.dtype == torch.float16
    torch.testing.assert_close(units[1, :, 8:].float(), F.normalize(maps[1, 1].permute(1, 2, 0), dim=-1), atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def local(trained_run, tiny_city):
    """The tiny city's trained zoom, its training photos and their maps from the city's local cache."""
    city = CityDir(tiny_city)
    loc = Localizer.load(trained_run, city.pyramid_path, progress=False)
    maps = LocalMaps(local_cache(loc.model.encoders, city, progress=False), loc.model.encoders)
    train = Samples.from_city(city, "train", loc.model.grid)
    yield loc, maps, train
    maps.cache.close()


def test_the_local_cache_holds_the_live_encoders_maps(local):
    loc, maps, train = local
    picks = list(train.image_ids[:3])
    cached, live = maps.of_ids(picks), maps.of_photos([train.image_paths[i] for i in range(3)])
    assert cached.shape[1:] == (4, 8, 112)  # Lite0's stride-16 map of the tiny city's 64 × 128 photos
    torch.testing.assert_close(cached.float(), live.float(), atol=2e-2, rtol=2e-2)  # float16 storage
    queried = copy.copy(loc)  # a query's maps, as `zoomloc localize` computes them beside its embedding
    queried.local = maps
    clues = queried.clues_of_photos([train.image_paths[i] for i in range(3)], [10.0, float("nan"), 350.0])
    torch.testing.assert_close(clues.local.float(), live.float(), atol=1e-3, rtol=1e-3)
    assert clues.heading_deg[0] == 10.0 and np.isnan(clues.heading_deg[1])
    assert loc.clues_of_photos([train.image_paths[0]]).local is None  # without the witness's re-ranking: no maps


def test_re_ranking_by_the_maps_finds_the_photo_that_the_embedding_missed(local):
    """Each query is a training photo with the place embedding of its most similar other photo: the embedding's
    nearest photo is that other one, and re-ranking its 20 best by their maps puts the photo itself first
    wherever it is among them. A photo
    facing away stays after every photo facing the query's way, re-ranked or not."""
    loc, maps, train = local
    street = loc.embed_samples(train, workers=0)
    rows = maps.cache.rows_of(train.image_ids)
    headings = np.zeros(len(train))
    headings[7] = 180.0  # photo 7 faces away from every query
    db = PhotoDatabase.of(street, train.lon, train.lat, loc.model.grid, loc.model.place_embedding, headings, (maps, rows))
    queries = np.arange(0, 200, 10)
    twins = (db.embeddings[queries] @ db.embeddings.T).topk(2).indices[:, 1].numpy()
    clues = Clues(np.zeros(len(queries)), maps.of_rows(rows[queries]))
    candidates = db.nearest(street[twins], 20, clues)[1]
    assert (candidates[:, 0] == twins).all()
    among = (candidates == queries[:, None]).any(axis=1)
    sims, reranked = db.nearest(street[twins], 5, clues, rerank_k=20)
    assert among.mean() > 0.5 and (reranked[among, 0] == queries[among]).all()
    assert np.allclose(sims[among, 0], 1.0, atol=1e-2)
    everything = len(db)
    facing = Clues(np.zeros(1), maps.of_rows(rows[[7]]))
    assert db.nearest(street[[7]], 1, facing, rerank_k=everything)[1][0, 0] == 7  # no heading limit: itself first
    sims, order = db.nearest(street[[7]], everything, facing, within_deg=90.0, rerank_k=everything)
    assert order[0, -1] == 7 and sims[0, -1] == pytest.approx(1.0 - FACING_AWAY, abs=1e-2)


def test_re_ranking_reads_shared_candidates_once_per_block_and_scores_as_query_by_query(local, monkeypatch):
    """Queries whose candidates overlap are re-ranked in blocks of at most DESCRIBED_PHOTOS distinct photos (a
    chunk of queries however many it needs), each photo described once: the same scores as a block per chunk,
    and each the pair's own score. A chunk holds MATCHED_PAIRS pairs: fewer queries where each has more candidates."""
    _, maps, train = local
    rows = maps.cache.rows_of(train.image_ids)
    candidates = np.random.default_rng(0).choice(rows[:60], (30, 12))  # neighbouring queries share candidates
    query = maps.of_rows(rows[:30])
    monkeypatch.setattr(local_match, "MATCHED_PAIRS", 48)
    assert [local_match._query_chunk(k) for k in (12, 24, 100)] == [4, 2, 1]
    monkeypatch.setattr(local_match, "DESCRIBED_PHOTOS", 1)  # a block per chunk
    alone = candidate_scores(maps, query, candidates)
    monkeypatch.setattr(local_match, "DESCRIBED_PHOTOS", 50)
    blocks = list(local_match._blocks(candidates, 4))
    assert [b.start for b, _ in blocks] == [0, *(b.stop for b, _ in blocks[:-1])] and blocks[-1][0].stop == 30
    assert any(b.stop - b.start > 4 for b, _ in blocks) and len(blocks) > 1
    for block, photos in blocks:
        np.testing.assert_array_equal(photos, np.unique(candidates[block]))
        assert len(photos) <= 50 or block.stop - block.start <= 4
    shared = candidate_scores(maps, query, candidates)
    np.testing.assert_allclose(shared, alone)
    pair = maps.of_rows(candidates[[5], [3]])[None].float()
    assert shared[5, 3] == pytest.approx(float(match_scores(query[[5]], pair)[0, 0]), abs=1e-6)


def test_depths_matched_at_once_give_each_depths_own_lookup(local, monkeypatch):
    """A lookup at several re-ranking depths matches the deepest's candidates once: each depth's neighbours are
    the ones its own lookup finds (a depth's candidates are the first of the deepest's), and each depth is
    remembered, so that asking again searches nothing."""
    loc, maps, train = local
    street = loc.embed_samples(train, workers=0)
    rows = maps.cache.rows_of(train.image_ids)
    headings = np.where(np.arange(len(train)) % 3 == 0, 180.0, 0.0)  # every third photo faces away from the queries
    args = (street, train.lon, train.lat, loc.model.grid, loc.model.place_embedding, headings, (maps, rows))
    queries = np.arange(1, 200, 7)
    clues = Clues(np.zeros(len(queries)), maps.of_rows(rows[queries]))
    together = PhotoDatabase.of(*args).nearest_at(street[queries], 8, clues, 90.0, (0, 5, 40))
    for depth, (sims, found) in together.items():
        own = PhotoDatabase.of(*args).nearest(street[queries], 8, clues, 90.0, depth)
        np.testing.assert_array_equal(found, own[1])
        np.testing.assert_allclose(sims, own[0], atol=1e-6)
    assert not (together[5][1] == together[40][1]).all() and not (together[0][1] == together[5][1]).all()
    db = PhotoDatabase.of(*args)
    db.nearest_at(street[queries], 8, clues, 90.0, (5, 40))
    searched: list[int] = []
    monkeypatch.setattr(PhotoDatabase, "_search", lambda self, street, *args: searched.append(len(street)) or {})
    np.testing.assert_array_equal(db.nearest(street[queries], 8, clues, 90.0, 5)[1], together[5][1])
    assert searched == []


def test_a_splits_head_is_fitted_once_kept_beside_the_cache_and_describes_every_map(local, tiny_city):
    """Fitted on the tiny city's training photos, kept (read back equal, not fitted again), and the maps read
    through it are the plain ones through the head, the city's and a live photo's alike."""
    loc, maps, train = local
    city = CityDir(tiny_city)
    args = (maps, city, train.image_ids, train.xy(loc.model.grid), train.heading_deg, train.captures, LocalHeadConfig(steps=3))
    before = set(city.embeddings_dir.glob("local_head_*.safetensors"))
    head = local_head(*args)
    kept = set(city.embeddings_dir.glob("local_head_*.safetensors")) - before
    assert head is not None and len(kept) == 1 and head.map.weight.abs().sum() > 0
    (path,) = kept
    stamp = path.stat().st_mtime_ns
    again = local_head(*args)
    assert path.stat().st_mtime_ns == stamp and all(
        torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values())
    )
    through = dataclasses.replace(maps, head=head)
    picks = list(train.image_ids[:3])
    torch.testing.assert_close(through.of_ids(picks).float(), head(maps.of_ids(picks)).float(), atol=2e-3, rtol=2e-3)
    live = through.of_photos([train.image_paths[i] for i in range(3)])
    torch.testing.assert_close(live.float(), through.of_ids(picks).float(), atol=3e-2, rtol=3e-2)


def test_the_fit_asks_for_a_head_only_where_re_ranking_pays_and_keeps_the_plain_maps_on_a_tie(local):
    """The twins of the test above as val photos: re-ranking lifts their lookup, so the fit asks for the maps
    through a head, once; an unfitted head changes nothing, and the simpler plain re-ranking keeps the tie.
    Without the queries' maps there is nothing to re-rank and no head is asked for."""
    loc, maps, train = local
    grid = loc.model.grid
    street = loc.embed_samples(train, workers=0)
    rows = maps.cache.rows_of(train.image_ids)
    db = PhotoDatabase.of(street, train.lon, train.lat, grid, loc.model.place_embedding, None, (maps, rows))
    queries = np.arange(0, 200, 10)
    twins = (db.embeddings[queries] @ db.embeddings.T).topk(2).indices[:, 1].numpy()
    truth = train.xy(grid)[queries]
    asked: list[int] = []

    def through_head() -> LocalMaps:
        asked.append(1)
        return dataclasses.replace(maps, head=LocalHead(maps.cache.plain(rows[:1]).shape[2]))

    clues = Clues(None, maps.of_rows(rows[queries]))
    cfg, _ = fit_photo_prior(loc.index, db, grid, street[twins], truth, within_m=5.0, clues=clues, through_head=through_head)
    assert asked == [1] and cfg.rerank > 0 and not cfg.local_head
    cfg, _ = fit_photo_prior(loc.index, db, grid, street[twins], truth, within_m=5.0, clues=Clues(None, None), through_head=through_head)
    assert asked == [1] and cfg.rerank == 0


def test_the_fit_re_ranks_deeper_where_more_candidates_hold_the_photo(local, monkeypatch):
    """Val queries searched by the embedding of a look-alike (their photo's 2nd or 15th most similar photo), with
    their own photo's maps, so that re-ranking finds their photo where it is among the candidates: where a deeper
    re-ranking holds more of them the fit goes deeper; where it finds no more, or not DEEPER_GAIN more, the
    shallower one stays."""
    loc, maps, train = local
    grid = loc.model.grid
    street = loc.embed_samples(train, workers=0)
    rows = maps.cache.rows_of(train.image_ids)
    db = PhotoDatabase.of(street, train.lon, train.lat, grid, loc.model.place_embedding, None, (maps, rows))
    monkeypatch.setattr(photo_prior, "RERANK", 2)
    monkeypatch.setattr(photo_prior, "FIT_DEEPER_RERANKS", (30,))
    queries = np.arange(0, 400, 10)
    order = (db.embeddings[queries] @ db.embeddings.T).argsort(dim=1, descending=True).numpy()
    lookalikes = np.where(np.arange(len(queries)) % 2 == 0, order[:, 1], order[:, 14])
    # where the query's photo ranks among the look-alike's (the look-alike itself first)
    ranks = (db.embeddings[lookalikes] @ db.embeddings.T).argsort(dim=1, descending=True).numpy()
    own = np.array([np.flatnonzero(r == q)[0] for r, q in zip(ranks, queries)])
    assert 0 < (own < 2).sum() < (own < 30).sum()

    def fit(picked: np.ndarray) -> int:
        truth, clues = train.xy(grid)[queries[picked]], Clues(None, maps.of_rows(rows[queries[picked]]))
        return fit_photo_prior(loc.index, db, grid, street[lookalikes[picked]], truth, within_m=1.0, clues=clues)[0].rerank

    assert fit(np.arange(len(queries))) == 30
    assert fit(np.flatnonzero(own < 2)) == 2
    monkeypatch.setattr(photo_prior, "DEEPER_GAIN", 10.0)  # more found, but not enough to pay for the depth
    assert fit(np.arange(len(queries))) == 2
