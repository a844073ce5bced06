"""The place loss: which pairs of photos are one place, what the multi-similarity loss asks of them,
and batches that bring each photo together with another capture's photo of its place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomloc.data.batches import PlaceOrder
from zoomloc.models.place import PlaceConfig, multi_similarity_loss, place_pairs

CFG = PlaceConfig(weight=1.0, radius_m=25.0, heading_deg=60.0)


def test_one_place_is_another_capture_near_and_looking_the_same_way():
    xy = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.0, 0.0], [5.0, 5.0], [100.0, 0.0], [40.0, 0.0]])
    heading = torch.tensor([0.0, 50.0, 170.0, 350.0, 0.0, float("nan")])
    captures = torch.tensor([0, 1, 1, 0, 2, 3])
    positive, negative = place_pairs(xy, heading, captures, CFG)
    assert positive[0].tolist() == [False, True, False, False, False, False]  # 2 faces away, 3 is its own capture
    assert positive[0, 1] == positive[1, 0]  # symmetric
    assert negative[0].tolist() == [False, False, False, False, True, False]  # 40 m: neither (within 2 radii)
    assert not (positive & negative).any()
    # Projected metres are millions (a UTM northing): the pairs must not drown in float32 rounding.
    far = xy.double() + torch.tensor([464_388.0, 5_246_877.0], dtype=torch.float64)
    for shifted in (far, far.float()):
        assert np.array_equal(place_pairs(shifted, heading, captures, CFG)[0], positive)
        assert np.array_equal(place_pairs(shifted, heading, captures, CFG)[1], negative)
    # An unknown heading agrees with any.
    assert place_pairs(torch.tensor([[0.0, 0.0], [3.0, 0.0]]), torch.tensor([0.0, float("nan")]), torch.tensor([0, 1]), CFG)[0][0, 1]


def test_the_loss_falls_as_places_gather_and_others_part():
    positive = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    negative = torch.tensor([[False, False, True], [False, False, True], [True, True, False]])
    apart = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05]])  # the pair apart, a stranger next to the anchor
    together = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]])
    assert multi_similarity_loss(together, positive, negative) < multi_similarity_loss(apart, positive, negative)
    # Mined out: a pair already far more alike than any stranger teaches nothing.
    assert multi_similarity_loss(together, positive, negative) == pytest.approx(0.0, abs=1e-6)
    embeddings = apart.clone().requires_grad_()
    multi_similarity_loss(embeddings, positive, negative).backward()
    assert embeddings.grad.abs().sum() > 0
    none = multi_similarity_loss(embeddings, torch.zeros(3, 3, dtype=torch.bool), negative)
    assert none.item() == 0 and none.requires_grad  # no positive: no loss, but still a graph for backward


def test_place_batches_pair_photos_with_their_place_from_another_capture():
    rng = np.random.default_rng(0)
    n = 400
    xy = rng.uniform(0, 300, size=(n, 2))
    heading = rng.uniform(0, 360, size=n)
    captures = rng.integers(0, 20, size=n)
    order = PlaceOrder(xy, heading, captures, CFG)
    first = order(torch.Generator().manual_seed(1))
    assert sorted(first.tolist()) == list(range(n)), "an epoch holds every photo once"
    torch.testing.assert_close(first, order(torch.Generator().manual_seed(1)))
    pairs = first.view(-1, 2).numpy()
    partnered = [(a, b) for a, b in pairs if b in order.partners[a]]
    assert len(partnered) >= 0.5 * sum(len(p) > 0 for p in order.partners) / 2, "most photos with a partner meet it"
    for a, b in partnered:
        assert captures[a] != captures[b] and np.hypot(*(xy[a] - xy[b])) <= 25
        turn = abs((heading[a] - heading[b] + 180) % 360 - 180)
        assert turn <= 60
    assert not torch.equal(first, order(torch.Generator().manual_seed(2))), "each epoch draws its own pairs"


@pytest.mark.parametrize("bad", [{"weight": -1.0}, {"radius_m": 0.0}, {"heading_deg": 0.0}, {"heading_deg": 200.0}])
def test_impossible_place_settings_are_refused(bad):
    with pytest.raises(ValueError):
        PlaceConfig(**bad)
