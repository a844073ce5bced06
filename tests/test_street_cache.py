"""The street cache: trunk outputs computed once must be what a live forward pass computes, a build
must survive an interruption, and training from the cache must be exact and resumable."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import train_in_process, untimed_records  # tests/ is on sys.path under pytest
from safetensors.torch import load_file

import zoomloc.data.trunk_cache as trunk_cache_module
from zoomloc.cli.main import main
from zoomloc.data.photos import AugmentConfig, street_input
from zoomloc.data.street_cache import StreetCache, StreetCacheSpec, build_street_cache, street_cache
from zoomloc.data.trunk_cache import augment_key, variant_of
from zoomloc.geo.citydir import CityDir
from zoomloc.models.encoders import EncoderConfig, build_encoder
from zoomloc.models.trunk import POOLED

AUGMENT = AugmentConfig(blur_p=0.5, jpeg_p=0.5)


@pytest.fixture(scope="module")
def few_photos(tiny_city, tmp_path_factory) -> CityDir:
    """The first 150 photos of ``tiny_city`` as a city of their own (the cache needs only photos)."""
    root = tmp_path_factory.mktemp("few_photos")
    src = CityDir(tiny_city)
    meta = src.read_metadata().iloc[:150]
    city = CityDir(root)
    city.images_dir.mkdir(parents=True)
    for image_id in meta["image_id"]:
        shutil.copy(src.image_path(image_id), city.image_path(image_id))
    meta.to_csv(city.metadata_csv, index=False)
    return city


@pytest.mark.parametrize("freeze", ["all_but_last_1", "all"])
def test_cached_trunk_gives_the_live_forward_pass(few_photos, freeze):
    encoders = build_encoder(EncoderConfig(street_size=(64, 128), freeze=freeze)).eval()
    cache = street_cache(encoders, few_photos, AUGMENT, views=2, seed=5, progress=False)
    assert (encoders.street_cut.at == POOLED) == (freeze == "all")
    ids = few_photos.read_metadata()["image_id"].tolist()
    picks = [0, 77, 149]
    rows = cache.rows_of([ids[i] for i in picks])
    transforms, augment = encoders.transforms(), AUGMENT.build()
    with torch.no_grad():
        plain = encoders.encode_street(cache.plain(rows), trunk=True)
        live = encoders.encode_street(torch.stack([street_input(few_photos.image_path(ids[i]), transforms) for i in picks]))
        torch.testing.assert_close(plain, live, rtol=2e-2, atol=2e-2)  # float16 storage
        for view in range(2):
            cached = encoders.encode_street(cache.augmented(rows, np.full(len(rows), view)), trunk=True)
            keys = [augment_key(5, i, view) for i in picks]
            fresh = torch.stack([street_input(few_photos.image_path(ids[i]), transforms, augment, k) for i, k in zip(picks, keys)])
            torch.testing.assert_close(cached, encoders.encode_street(fresh), rtol=2e-2, atol=2e-2)
        # The two views are two different augmentations, not one stored twice.
        assert not torch.equal(cache.augmented(rows, np.zeros(3)), cache.augmented(rows, np.ones(3)))
    cache.close()


def test_an_interrupted_build_resumes_to_the_same_cache(few_photos, tmp_path, monkeypatch):
    encoders = build_encoder(EncoderConfig(street_size=(32, 64), freeze="all_but_last_1")).eval()
    spec = StreetCacheSpec.of(encoders, few_photos, AUGMENT, views=2, seed=0)
    straight, resumed = tmp_path / "straight.h5", tmp_path / "resumed.h5"
    build_street_cache(straight, spec, encoders.street_trunk, encoders, few_photos, progress=False)

    write = trunk_cache_module._write_chunk
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second chunk never lands
            raise KeyboardInterrupt
        write(*args, **kwargs)

    monkeypatch.setattr(trunk_cache_module, "_write_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_street_cache(resumed, spec, encoders.street_trunk, encoders, few_photos, progress=False)
    building = tmp_path / ".resumed.h5.building"
    assert not resumed.exists() and building.is_file()
    with h5py.File(building) as f:
        assert f.attrs["done"] == trunk_cache_module.CHUNK  # the first chunk is kept

    monkeypatch.setattr(trunk_cache_module, "_write_chunk", write)
    written = []
    monkeypatch.setattr(trunk_cache_module, "_write_chunk", lambda f, start, *a: (written.append(start), write(f, start, *a)))
    build_street_cache(resumed, spec, encoders.street_trunk, encoders, few_photos, progress=False)
    assert written[0] == trunk_cache_module.CHUNK, "the resumed build starts after the chunk already written"
    assert not building.exists()
    with h5py.File(straight) as a, h5py.File(resumed) as b:
        for name in ("image_ids", "plain", "augmented"):
            np.testing.assert_array_equal(a[name][()], b[name][()])
        assert json.loads(a.attrs["spec"]) == json.loads(b.attrs["spec"])


def test_the_cache_is_named_by_what_makes_it(few_photos):
    encoders = build_encoder(EncoderConfig(street_size=(32, 64), freeze="all_but_last_1"))
    base = StreetCacheSpec.of(encoders, few_photos, AUGMENT, views=2, seed=0)
    others = [
        StreetCacheSpec.of(encoders, few_photos, AUGMENT, views=3, seed=0),
        StreetCacheSpec.of(encoders, few_photos, AUGMENT, views=2, seed=1),
        StreetCacheSpec.of(encoders, few_photos, AugmentConfig(), views=2, seed=0),
        StreetCacheSpec.of(build_encoder(EncoderConfig(street_size=(32, 64), freeze="all_but_last_2")), few_photos, AUGMENT, 2, 0),
        StreetCacheSpec.of(build_encoder(EncoderConfig(street_size=(32, 96), freeze="all_but_last_1")), few_photos, AUGMENT, 2, 0),
        StreetCacheSpec.of(
            build_encoder(EncoderConfig(weights="none", street_size=(32, 64), freeze="all_but_last_1")), few_photos, AUGMENT, 2, 0
        ),
    ]  # fmt: skip
    assert len({base.key, *(o.key for o in others)}) == 1 + len(others)
    assert StreetCacheSpec.of(encoders, few_photos, AUGMENT, views=2, seed=0).key == base.key


def test_each_epoch_draws_every_view():
    keys = np.arange(10_000) * 1_000_003 + 17
    drawn = variant_of(keys, 4)
    assert set(drawn) == {0, 1, 2, 3}
    assert np.abs(np.bincount(drawn) / len(drawn) - 0.25).max() < 0.02
    np.testing.assert_array_equal(drawn, variant_of(keys, 4))


CACHED_RUN = """
model:
  kind: {kind}
  encoder: {{street_size: [32, 64], sat_size: 32, freeze: {freeze}, sat_freeze: {sat}, pool: {pool}{vlad}}}
  {heads}
train: {{steps: 6, batch_size: 16, lr: 5.0e-4, warmup_steps: 2, val_every: 2, val_queries: 32, log_every: 2,
        workers: 0, deterministic: true, cache_views: 2, rollout: {rollout}, rollout_target: {target}, cpu_bf16: {bf16},
        place: {{weight: {place}}}}}
"""


@pytest.mark.parametrize(
    ("kind", "sat", "pool", "rollout", "target", "bf16", "place"),
    [
        ("zoom", "all", "avg", 0.0, "nearest", "false", 0.0),
        ("zoom", "all", "avg", 0.6, "uniform", "true", 0.0),
        # Both tails train on cached trunks (the satellite's from zoomloc.data.sat_cache), pooled by GeM,
        # with the place loss on batches that pair photos of one place.
        ("zoom", "all_but_last_1", "gem", 0.0, "nearest", "true", 0.5),
        ("retrieval", "all_but_last_1", "gem", 0.0, "nearest", "false", 0.0),
        # Frozen backbones cut before a learned aggregator: NetVLAD alone trains on both views' cached maps.
        ("zoom", "all", "netvlad", 0.0, "nearest", "true", 0.0),
    ],
)
def test_training_from_the_cache_is_deterministic_and_resumes_exactly(
    tiny_city, tmp_path, monkeypatch, kind, sat, pool, rollout, target, bf16, place
):
    config = tmp_path / "run.yaml"
    heads = "policy: {width: 32, layers: 1, heads: 2}" if kind == "zoom" else "retrieval: {dim: 32}"
    vlad = pool == "netvlad"
    freeze, extra = ("all", ", keep_blocks: 6, vlad_clusters: 4, vlad_dim: 16") if vlad else ("all_but_last_1", "")
    config.write_text(
        CACHED_RUN.format(
            kind=kind, heads=heads, freeze=freeze, sat=sat, pool=pool, vlad=extra, rollout=rollout, target=target, bf16=bf16, place=place
        )
    )
    first, second, resumed = tmp_path / "first", tmp_path / "second", tmp_path / "resumed"
    assert train_in_process(tiny_city, "--config", config, "--out", first) == 0
    assert list((tiny_city / "embeddings").glob("street_*.h5")), "the cache lies in the city's embeddings folder"
    assert train_in_process(tiny_city, "--config", config, "--out", second) == 0
    # Interrupted after its first checkpoint (step 2), then resumed.
    import zoomloc.training.trainer as train_module

    save = train_module.save_train_state

    def stop_after_first(path, state):
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_train_state", stop_after_first)
    assert train_in_process(tiny_city, "--config", config, "--out", resumed) == 130
    monkeypatch.setattr(train_module, "save_train_state", save)
    assert train_in_process(tiny_city, "--out", resumed, "--resume") == 0

    records = untimed_records(first)
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
    assert all(("place" in r) == bool(place) for r in records if "loss" in r), "the place loss is logged when on"
    if rollout:
        shares = [r["rollout"] for r in records if "rollout" in r]
        assert shares == sorted(shares) and 0 < shares[0] < shares[-1] == pytest.approx(rollout)
    for other in (second, resumed):
        assert untimed_records(other) == records
        a, b = load_file(first / "last.safetensors"), load_file(other / "last.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    weights = load_file(first / "last.safetensors")
    if vlad:
        _assert_only_the_aggregators_learned(weights)
        return
    initial = build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32)).state_dict()
    for view in ("street", "sat"):
        tail = {k: v for k, v in weights.items() if k.startswith(f"encoders.backbones.{view}.blocks.6")}
        assert tail, "the tail (the last stage) is part of the model"
        moved = any(not torch.equal(v, initial[k.removeprefix("encoders.")]) for k, v in tail.items() if v.is_floating_point())
        assert moved == (view == "street" or sat != "all"), f"the {view} tail trains exactly when configured to"
    if sat != "all":
        assert list((tiny_city / "embeddings").glob("sattrunk_*.h5")), "the views' trunk cache lies beside the pyramid's"
        assert weights["encoders.backbones.sat.global_pool.p"] != 3.0, "GeM's exponent learns"


def _assert_only_the_aggregators_learned(weights: dict[str, torch.Tensor]) -> None:
    """A NetVLAD run's checkpoint: the pruned backbones as ImageNet's, each view's NetVLAD fitted to data first."""
    fresh = build_encoder(EncoderConfig(street_size=(32, 64), sat_size=32, keep_blocks=6, freeze="all", pool="netvlad", vlad_clusters=4))
    initial = fresh.state_dict()
    for view in ("street", "sat"):
        prefix = f"encoders.backbones.{view}."
        blocks = {k: v for k, v in weights.items() if k.startswith(prefix) and ".global_pool." not in k}
        assert blocks and all(torch.equal(v, initial[k.removeprefix("encoders.")]) for k, v in blocks.items()), f"the {view} backbone stays"
        assert weights[f"{prefix}global_pool.fitted"], f"the {view} NetVLAD's centres were fitted before training"


def test_cache_and_rollout_settings_are_checked(tmp_path, capsys):
    for bad, why in [
        ("{cache_views: 2}", "frozen part"),  # freeze: none
        ("{rollout: 1.5}", "rollout"),
    ]:
        path = tmp_path / "bad.yaml"
        path.write_text(f"model: {{encoder: {{freeze: none}}}}\ntrain: {bad}\n")
        assert main(["train", str(tmp_path), "--config", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and str(path) in err and "\n" not in err


def test_a_cache_of_other_photos_is_refused(few_photos):
    encoders = build_encoder(EncoderConfig(street_size=(32, 64), freeze="all"))
    cache = street_cache(encoders, few_photos, AUGMENT, views=1, seed=0, progress=False)
    with pytest.raises(Exception, match="no photo 'nope'"):
        cache.rows_of(["nope"])
    assert isinstance(cache, StreetCache) and len(cache) == 150
    cache.close()


def test_a_frozen_encoder_derives_its_pooled_cache_from_a_trunk_cache_of_its_trunk(few_photos, monkeypatch):
    """An encoder trained on a trunk cache, then frozen (``weights:`` its run): its pooled cache is its
    tail over the stored maps, not a new pass over every photo — and equal to one within float16."""
    import zoomloc.data.street_cache as street_cache_module

    taught = build_encoder(EncoderConfig(street_size=(32, 64), freeze="all_but_last_1", pool="gem")).eval()
    street_cache(taught, few_photos, AUGMENT, views=2, seed=5, progress=False).close()
    frozen = build_encoder(EncoderConfig(street_size=(32, 64), freeze="all", pool="gem")).eval()
    with torch.no_grad():  # what training changed: the tail only (the cached trunk is ImageNet's in both)
        frozen.backbone("street").conv_head.weight.mul_(1.5)
        frozen.backbone("street").global_pool.p.fill_(2.2)

    def no_build(*args, **kwargs):
        raise AssertionError("the pooled cache was built from the photos, not derived")

    monkeypatch.setattr(street_cache_module, "build_street_cache", no_build)
    cache = street_cache(frozen, few_photos, AUGMENT, views=2, seed=5, progress=False)
    assert cache.spec["cut"] == POOLED and cache.views == 2
    ids = few_photos.read_metadata()["image_id"].tolist()
    picks = [0, 77, 149]
    rows = cache.rows_of([ids[i] for i in picks])
    transforms, augment = frozen.transforms(), AUGMENT.build()
    with torch.no_grad():
        live = frozen.encode_street(torch.stack([street_input(few_photos.image_path(ids[i]), transforms) for i in picks]))
        torch.testing.assert_close(frozen.encode_street(cache.plain(rows), trunk=True), live, rtol=2e-2, atol=2e-2)
        fresh = torch.stack([street_input(few_photos.image_path(ids[i]), transforms, augment, augment_key(5, i, 1)) for i in picks])
        torch.testing.assert_close(
            frozen.encode_street(cache.augmented(rows, np.ones(3)), trunk=True), frozen.encode_street(fresh), rtol=2e-2, atol=2e-2
        )
    cache.close()

    # Another trunk (here: its first block changed) has no cache to derive from: the photos are encoded.
    with torch.no_grad():
        frozen.backbone("street").blocks[0][0].conv_dw.weight.mul_(0.9)
    with pytest.raises(AssertionError, match="built from the photos"):
        street_cache(frozen, few_photos, AUGMENT, views=2, seed=5, progress=False)
