"""The learned aggregator (NetVLAD) and the pruned backbones it reads: what it computes, how it starts,
how it is cut for the caches and how its state travels in a checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from zoomloc.core.errors import ConfigError, InputError
from zoomloc.models.encoders import EncoderConfig, build_encoder
from zoomloc.models.pooling import NetVLAD
from zoomloc.models.trunk import HEAD

SMALL = {"street_size": (32, 64), "sat_size": 32}
VLAD = EncoderConfig(**SMALL, freeze="all", sat_freeze="all", pool="netvlad", keep_blocks=6, vlad_clusters=4, vlad_dim=16)


def _clustered(directions: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Maps ``[n, C, 2, 2]`` whose local features lie close to the given unit directions."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(directions), (n * 4,), generator=g)
    local = directions[pick] + 0.05 * torch.randn(n * 4, directions.shape[1], generator=g)
    return local.view(n, 2, 2, -1).permute(0, 3, 1, 2)


def test_netvlad_fits_its_centres_to_the_kinds_of_local_features():
    directions = torch.eye(8)[:3]
    vlad = NetVLAD(8, clusters=3, dim=0)
    assert not vlad.fitted
    vlad.fit(_clustered(directions, 200))
    assert vlad.fitted
    # Each centre is one of the three directions (in some order), and a feature goes to its own.
    match = vlad.centroids.detach() @ directions.T
    assert sorted(match.argmax(1).tolist()) == [0, 1, 2] and match.max(1).values.min() > 0.99
    weights = F.softmax(vlad.assign(directions[:, :, None, None]), dim=1).flatten(1)
    assert (weights.max(1).values > 0.95).all(), "the initial assignment is nearly the hard nearest centre"
    # Two maps of the same kinds of features in other proportions differ; a map and its scaled copy do not.
    x = _clustered(directions, 2, seed=1)
    out = vlad(torch.cat([x, 3 * x]))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(out[:2], out[2:], atol=1e-5, rtol=1e-5)
    assert out.shape == (4, 3 * 8)
    # Fewer features than centres (a tiny city): as many centres as features are fitted, the others kept.
    few = NetVLAD(8, clusters=6, dim=4)
    kept = few.centroids.detach().clone()
    few.fit(_clustered(directions, 1))
    assert torch.equal(few.centroids[4:], kept[4:]) and not torch.equal(few.centroids[:4], kept[:4]) and few(x).shape == (2, 4)


def test_a_pruned_backbone_computes_the_full_one_s_intermediate_features():
    """keep_blocks loads the ImageNet weights by order into the kept blocks: its maps are the full model's."""
    pruned = build_encoder(EncoderConfig(**SMALL, keep_blocks=6, freeze="all")).backbone("street").eval()
    full = build_encoder(EncoderConfig(**SMALL, freeze="all")).backbone("street").eval()
    x = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mid = full.forward_intermediates(x, indices=[6], extra_blocks=True, intermediates_only=True)[0]
        torch.testing.assert_close(pruned.forward_features(x), mid)
        torch.testing.assert_close(pruned(x), mid.mean((-2, -1)))  # average pooling, as before the pruning
    assert len(pruned.blocks) == 6 and not any(k.startswith(("blocks.6", "conv_head")) for k in pruned.state_dict())
    with pytest.raises(ConfigError, match="has 7 blocks"):
        build_encoder(EncoderConfig(**SMALL, keep_blocks=9))
    with pytest.raises(ConfigError, match="pruned block by block"):
        build_encoder(EncoderConfig(name="resnet18", weights="none", **SMALL, keep_blocks=2))


def test_a_frozen_backbone_under_netvlad_is_cut_before_its_pooling_for_both_caches():
    encoders = build_encoder(VLAD).eval()
    assert encoders.num_features == 16 and not VLAD.sat_frozen, "the map's embeddings change as NetVLAD learns"
    trains = {n for n, p in encoders.named_parameters() if p.requires_grad}
    assert trains and all(".global_pool." in n for n in trains), "only the aggregators train"
    assert encoders.street_cut.at == encoders.sat_cut.at == HEAD
    g = torch.Generator().manual_seed(1)
    photos, views = torch.rand(3, 1, 3, 32, 64, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        stored = encoders.street_trunk(photos).half()  # what the street cache keeps
        assert stored.shape == (3, 1, 192, 1, 2)
        torch.testing.assert_close(encoders.encode_street(stored.float(), trunk=True), encoders.encode_street(photos), rtol=2e-2, atol=2e-2)
        maps = encoders.sat_trunk(views).half()
        torch.testing.assert_close(encoders.encode_sat(maps.float(), trunk=True), encoders.encode_sat(views), rtol=2e-2, atol=2e-2)


def test_a_checkpoint_s_netvlad_travels_with_its_encoder(tmp_path):
    trained = build_encoder(VLAD)
    for i, view in enumerate(("street", "sat")):
        pool = trained.backbone(view).global_pool
        pool.fit(torch.rand(8, 192, 2, 2, generator=torch.Generator().manual_seed(i)))
        with torch.no_grad():
            pool.project.weight.mul_(1.5 + i)
    weights = tmp_path / "best.safetensors"
    save_file({f"encoders.{k}": v.contiguous() for k, v in trained.state_dict().items()}, weights)
    follower = build_encoder(EncoderConfig(**{**VLAD.__dict__, "weights": str(weights)}))
    for view in ("street", "sat"):
        theirs, ours = trained.backbone(view).global_pool.state_dict(), follower.backbone(view).global_pool.state_dict()
        assert all(torch.equal(theirs[k], ours[k]) for k in theirs) and ours["fitted"]
    with pytest.raises(InputError, match="pooled with netvlad, the config asks for gem: set pool: netvlad"):
        build_encoder(EncoderConfig(**SMALL, keep_blocks=6, pool="gem", freeze="all", weights=str(weights)))


def test_the_netvlad_settings_are_checked():
    for bad, why in [
        ({"pool": "vlad"}, "pool must be one of"),
        ({"vlad_clusters": 0}, "vlad_clusters"),
        ({"keep_blocks": 0}, "keep_blocks"),
    ]:
        with pytest.raises(ValueError, match=why):
            EncoderConfig(**bad)
