"""The nearest-photo reference: a query takes the position of its most similar training photo."""

from __future__ import annotations

import numpy as np

from zoomloc.benchmark import random_cell_metrics
from zoomloc.citydir import CityDir
from zoomloc.data import Samples
from zoomloc.encoders import EncoderConfig
from zoomloc.nearest_photo import nearest_photo_metrics
from zoomloc.pyramid import PyramidReader

ENCODER = EncoderConfig(street_size=(32, 64), freeze="all_but_last_1")  # the reference freezes it all


def test_nearest_photo_reference(tiny_city):
    city = CityDir(tiny_city)
    with PyramidReader(city.pyramid_path) as pyr:
        grid = pyr.grid
    train, val = Samples.from_city(city, "train", grid), Samples.from_city(city, "val", grid)
    # A training photo's best match is itself: the answer is its own recorded position.
    _, errors = nearest_photo_metrics(city, ENCODER, train, train.subset(40))
    assert np.mean(errors < 1e-6) >= 0.95
    metrics, errors = nearest_photo_metrics(city, ENCODER, train, val, split="val")
    assert metrics["model"] == "nearest photo" and metrics["n_queries"] == len(val) == len(errors)
    floor, _ = random_cell_metrics(val, grid, seed=0)
    # tiny_city's val photos have training neighbours a few metres away (8 m blocks, no buffer).
    assert metrics["recall_at_1"]["25"] > 4 * max(floor["recall_at_1"]["25"], 1.0)
    assert metrics["recall_at_5"]["100"] >= metrics["recall_at_1"]["100"]
