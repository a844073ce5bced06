"""The references: the random cell, and the nearest photo (a query takes the position of its most similar training photo)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from zoomloc.data.photos import AugmentConfig
from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import CacheViews
from zoomloc.evaluation.references import initial_copy, nearest_photo_metrics, random_cell_metrics
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.checkpoint import LAST, RUN_CONFIG, load_model, read_info
from zoomloc.models.embeddings import weights_fingerprint
from zoomloc.models.encoders import EncoderConfig, build_encoder
from zoomloc.training.trainer import load_run_config

ENCODER = EncoderConfig(street_size=(32, 64), freeze="all_but_last_1")  # the reference freezes it all


def test_nearest_photo_reference(tiny_city):
    city = CityDir(tiny_city)
    with PyramidReader(city.pyramid_path) as pyr:
        grid = pyr.grid
    train, val = Samples.from_city(city, "train", grid), Samples.from_city(city, "val", grid)
    # A training photo's best match is itself: the answer is its own recorded position.
    _, errors = nearest_photo_metrics(city, build_encoder(ENCODER), train, train.subset(40))
    assert np.mean(errors < 1e-6) >= 0.95
    metrics, errors = nearest_photo_metrics(city, build_encoder(ENCODER), train, val, split="val")
    assert metrics["model"] == "nearest photo" and metrics["n_queries"] == len(val) == len(errors)
    floor, _ = random_cell_metrics(val, grid, seed=0)
    # tiny_city's val photos have training neighbours a few metres away (8 m blocks, no buffer).
    assert metrics["recall_at_1"]["25"] > 4 * max(floor["recall_at_1"]["25"], 1.0)
    assert metrics["recall_at_5"]["100"] >= metrics["recall_at_1"]["100"]


def test_the_nearest_photo_reads_the_street_cache_its_run_trained_with(trained_run):
    """Every checkpoint names the street cache its run read, so that ``zoomloc evaluate`` encodes no photo again."""
    train = load_run_config(trained_run / RUN_CONFIG).train
    expected = CacheViews(train.augment, train.cache_views, train.seed)
    assert CacheViews.of_info(read_info(trained_run)) == expected
    assert CacheViews.of_info(read_info(trained_run / LAST)) == expected
    other = CacheViews(AugmentConfig(colour=0.1, jpeg_quality=(50, 60)), views=3, seed=7)
    assert CacheViews.of_info(json.loads(json.dumps({"street_cache": other.to_info()}))) == other  # as a checkpoint stores it
    assert CacheViews.of_info({}) == CacheViews()  # a checkpoint saved without it: the plain crops


def test_the_reference_freezes_the_models_own_weights(trained_run):
    """A checkpoint's config names no weights file (they are in the checkpoint): the reference must
    not rebuild a randomly initialised encoder from it, but freeze the model's own, whose trunk
    is the one training cached."""
    model, _ = load_model(trained_run)
    assert model.encoder_cfg.weights == "none"
    trained = load_run_config(trained_run / RUN_CONFIG).model.encoder
    expected = build_encoder(dataclasses.replace(trained, freeze="all", sat_freeze="all"))
    assert weights_fingerprint(initial_copy(model.encoders).street_cut.trunk) == weights_fingerprint(expected.street_cut.trunk)


def test_the_two_nearest_photos_read_the_initial_and_the_trained_tail(tiny_city):
    """A model whose street tail trained: the initial reference must be the ImageNet features (whatever
    the tail learned), the trained one the model's own embedding; both read the model's street cache."""
    import torch

    from zoomloc.evaluation.references import references
    from zoomloc.models.policy import PolicyConfig
    from zoomloc.models.zoom import ZoomModel

    city = CityDir(tiny_city)
    with PyramidReader(city.pyramid_path) as pyr:
        grid = pyr.grid
    val = Samples.from_city(city, "val", grid)
    model = ZoomModel(ENCODER, PolicyConfig(width=32, layers=1, heads=2), grid).eval()
    with torch.no_grad():  # as if training had moved the tail
        for p in model.encoders.street_cut.tail.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    metrics, errors = references(city, grid, model, val, split="val", initial_weights="efficientnet-lite0")
    assert metrics["nearest_photo"]["features"] == "initial"
    imagenet = build_encoder(dataclasses.replace(ENCODER, freeze="all"))
    _, pooled = nearest_photo_metrics(city, imagenet, Samples.from_city(city, "train", grid), val, split="val")
    assert np.mean(np.isclose(errors["nearest_photo"], pooled)) >= 0.95, (
        "the initial tail over the cached trunk is ImageNet's whole forward"
    )
    assert not np.allclose(errors["nearest_photo_trained"], errors["nearest_photo"]), "the trained reference reads the trained tail"
    assert set(metrics) == {"nearest_photo", "nearest_photo_trained", "random"}


def test_a_frozen_zoom_has_a_trained_reference_only_with_its_cell_head(tiny_city):
    """With frozen encoders the zoom's street embedding never trains (no trained reference); its cell head's
    embedding is what it compares photos by, so with one the trained reference is that head's."""
    from zoomloc.evaluation.references import references
    from zoomloc.models.policy import PolicyConfig
    from zoomloc.models.zoom import ZoomModel

    city = CityDir(tiny_city)
    with PyramidReader(city.pyramid_path) as pyr:
        grid = pyr.grid
    val = Samples.from_city(city, "val", grid)
    frozen = dataclasses.replace(ENCODER, freeze="all")
    found = {}
    for match_dim in (0, 8):
        model = ZoomModel(frozen, PolicyConfig(width=32, layers=1, heads=2, match_dim=match_dim), grid).eval()
        found[match_dim] = references(city, grid, model, val, split="val", initial_weights="efficientnet-lite0")[1]
    assert set(found[0]) == {"nearest_photo", "random"}
    assert set(found[8]) == {"nearest_photo", "nearest_photo_trained", "random"}
    assert not np.array_equal(found[8]["nearest_photo_trained"], found[8]["nearest_photo"])
