"""The satellite trunk cache: cached views through the tail must give what a live forward pass gives,
a build must survive an interruption, and a batch must read each distinct view once."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import zoomloc.data.trunk_cache as trunk_cache_module
from zoomloc.data.sat_cache import SatAugmentConfig, SatCacheSpec, build_sat_cache, sat_trunk_cache, trunk_embeddings
from zoomloc.data.trunk_cache import augment_key
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.embeddings import compute_embeddings
from zoomloc.models.encoders import EncoderConfig, SatTrunks, build_encoder

AUGMENT = SatAugmentConfig(colour=0.3, shift=0.1)
TRAINING_SAT = EncoderConfig(street_size=(32, 64), sat_size=32, freeze="all_but_last_1", sat_freeze="all_but_last_1", pool="gem")


@pytest.fixture(scope="module")
def pyramid(tiny_city):
    with PyramidReader(tiny_city / "pyramid.h5") as reader:
        yield reader


def _view(pyramid: PyramidReader, length: int, cell: int) -> torch.Tensor:
    raw = pyramid.context([cell])[0] if length == pyramid.grid.levels else pyramid.views(length, [cell])[0]
    return torch.from_numpy(raw).permute(2, 0, 1).contiguous()


def test_cached_views_give_the_live_forward_pass(pyramid, tmp_path):
    encoders = build_encoder(TRAINING_SAT).eval()
    cache = sat_trunk_cache(encoders, pyramid, AUGMENT, views=2, seed=3, cache_dir=tmp_path, progress=False)
    assert encoders.sat_cut.at == "blocks.6" and cache.grid == pyramid.grid
    transforms, augment = encoders.transforms(), AUGMENT.build(pyramid.px)
    with torch.no_grad():
        for length, cell in [(0, 0), (1, 9), (pyramid.grid.levels, 200)]:
            row = cache.rows(length, [cell])
            live = encoders.encode_sat(transforms.sat(_view(pyramid, length, cell))[None])
            torch.testing.assert_close(encoders.encode_sat(cache.plain(row), trunk=True), live, rtol=2e-2, atol=2e-2)  # float16
            for v in range(2):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(augment_key(3, int(row[0]), v))
                    fresh = transforms.sat(augment(_view(pyramid, length, cell)))
                cached = encoders.encode_sat(cache.augmented(row, np.array([v])), trunk=True)
                torch.testing.assert_close(cached, encoders.encode_sat(fresh[None]), rtol=2e-2, atol=2e-2)
        # The two copies are two augmentations, and neither is the plain view.
        rows = cache.rows(1, np.arange(4))
        plain, first, second = cache.plain(rows), cache.augmented(rows, np.zeros(4)), cache.augmented(rows, np.ones(4))
        assert not torch.equal(first, second) and not torch.equal(first, plain)
        # The map's embeddings from the cache are the live ones: what validation searches is what a query would.
        cached, live = trunk_embeddings(encoders, cache, (0, 1, 2)), compute_embeddings(encoders, pyramid, progress=False)
        for a, b in zip([*cached.levels, cached.terminal], [*live.levels, live.terminal]):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    cache.close()


def test_an_interrupted_view_cache_resumes_to_the_same_bytes(pyramid, tmp_path, monkeypatch):
    encoders = build_encoder(TRAINING_SAT).eval()
    spec = SatCacheSpec.of(encoders, pyramid, AUGMENT, views=1, seed=0)
    straight, resumed = tmp_path / "straight.h5", tmp_path / "resumed.h5"
    build_sat_cache(straight, spec, encoders, pyramid, progress=False)
    write, calls = trunk_cache_module._write_chunk, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:  # the third chunk never lands
            raise KeyboardInterrupt
        write(*args)

    monkeypatch.setattr(trunk_cache_module, "_write_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_sat_cache(resumed, spec, encoders, pyramid, progress=False)
    building = tmp_path / ".resumed.h5.building"
    with h5py.File(building) as f:
        assert f.attrs["done"] == 2 * trunk_cache_module.CHUNK
    written = []
    monkeypatch.setattr(trunk_cache_module, "_write_chunk", lambda f, start, *a: (written.append(start), write(f, start, *a)))
    build_sat_cache(resumed, spec, encoders, pyramid, progress=False)
    assert written[0] == 2 * trunk_cache_module.CHUNK and not building.exists()
    with h5py.File(straight) as a, h5py.File(resumed) as b:
        for name in ("plain", "augmented"):
            assert a[name][()].tobytes() == b[name][()].tobytes()


def test_a_batch_reads_each_distinct_view_once(pyramid, tmp_path):
    encoders = build_encoder(TRAINING_SAT).eval()
    cache = sat_trunk_cache(encoders, pyramid, AUGMENT, views=2, seed=0, cache_dir=tmp_path, progress=False)
    grid = pyramid.grid
    paths = np.random.default_rng(0).integers(0, grid.k**2, size=(40, grid.levels))
    paths[1] = paths[0]  # two samples of one cell
    lengths = (0, 1)
    sats = cache.batch(paths, lengths, key=7)
    distinct = {(0, 0)} | {(1, int(c)) for c in grid.cell_of_path(paths[:, :1])}
    assert len(sats.maps) == len(distinct) and sats.index.shape == (40, 2)
    assert (sats.index[:, 0] == sats.index[0, 0]).all(), "every sample shares the one level-0 view"
    np.testing.assert_array_equal(sats.index[0], sats.index[1])
    with torch.no_grad():
        features = encoders.sat_features(sats)
        for i in (0, 17):
            row = cache.rows(1, grid.cell_of_path(paths[i : i + 1, :1]))
            candidates = [encoders.encode_sat(cache.augmented(row, [v]), trunk=True)[0] for v in range(2)]
            assert any(torch.allclose(features[i, 1], c, atol=1e-5) for c in candidates), "a sample's view is one of its cell's copies"
    torch.testing.assert_close(cache.batch(paths, lengths, key=7).maps, sats.maps)  # drawn by the key alone
    assert not all(torch.equal(cache.batch(paths, lengths, key=k).maps, sats.maps) for k in range(8, 12)), "other steps draw other copies"
    cache.close()


def test_the_view_cache_is_named_by_what_makes_it(pyramid):
    encoders = build_encoder(TRAINING_SAT)
    base = SatCacheSpec.of(encoders, pyramid, AUGMENT, views=2, seed=0)
    others = [
        SatCacheSpec.of(encoders, pyramid, AUGMENT, views=1, seed=0),
        SatCacheSpec.of(encoders, pyramid, AUGMENT, views=2, seed=1),
        SatCacheSpec.of(encoders, pyramid, SatAugmentConfig(), views=2, seed=0),
        SatCacheSpec.of(build_encoder(EncoderConfig(sat_size=32, sat_freeze="all_but_last_2")), pyramid, AUGMENT, 2, 0),
        SatCacheSpec.of(build_encoder(EncoderConfig(sat_size=48, sat_freeze="all_but_last_1")), pyramid, AUGMENT, 2, 0),
    ]
    assert len({base.key, *(o.key for o in others)}) == 1 + len(others)
    assert SatCacheSpec.of(build_encoder(TRAINING_SAT), pyramid, AUGMENT, views=2, seed=0).key == base.key


def test_sat_trunks_gather_the_tail_of_each_distinct_view():
    encoders = build_encoder(TRAINING_SAT).eval()
    maps = encoders.sat_trunk(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    index = torch.tensor([[0, 2], [1, 1]])
    with torch.no_grad():
        gathered = encoders.sat_features(SatTrunks(maps, index))
        direct = encoders.encode_sat(maps, trunk=True)
    assert gathered.shape == (2, 2, encoders.num_features)
    torch.testing.assert_close(gathered[0, 1], direct[2])
    torch.testing.assert_close(gathered[1, 0], gathered[1, 1])
