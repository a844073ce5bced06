"""What a model's figures are read against: the random cell (the floor) and the nearest photo (the rival).

- **random cell**: each query guesses terminal cells uniformly at random. A model at this level
  has learned nothing usable.
- **nearest photo**: each query takes the position of its most similar training photo. In the
  same-area protocols (``photo``, ``sequence``) it is the rival a practitioner tries first — why
  not match a new photo against the city's geotagged ones? It needs no map and no training, and
  it cannot answer where no training photo was taken: a model that reads the map should beat it
  there. Its features are the model's street encoder, frozen whole (for a model trained over a
  frozen encoder, its ImageNet weights; its input size), pooled and read from the street cache,
  compared by cosine similarity, exact search; the answer is the recorded GPS position of the
  best match.

``zoomloc evaluate`` reports both beside the model (``metrics.json``'s ``references``); the
benchmark tables them for every protocol.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import CacheViews, street_cache
from zoomloc.evaluation.metrics import summarize_errors
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import ZoomGrid, geodesic_m
from zoomloc.models.encoders import ViewEncoders, build_encoder

TOP = 5  # matches kept per query (Recall@5)
CHUNK = 1024  # queries compared at once


def references(
    city: CityDir,
    grid: ZoomGrid,
    encoders: ViewEncoders,
    queries: Samples,
    *,
    split: str,
    cache_views: CacheViews = CacheViews(),
    seed: int = 0,
    workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Both references on ``queries`` (photos of ``split``): ``{"nearest_photo": metrics, "random": metrics}``
    and their top-1 errors. The nearest photo is left out for the training split, whose photos would
    find themselves, and where the city's split has no training photo to match."""
    metrics, errors = {}, {}
    if split != "train" and (city.read_split()["split"] == "train").any():
        train = Samples.from_city(city, "train", grid)
        metrics["nearest_photo"], errors["nearest_photo"] = nearest_photo_metrics(
            city, encoders, train, queries, split=split, cache_views=cache_views, workers=workers, progress=progress
        )
    metrics["random"], errors["random"] = random_cell_metrics(queries, grid, seed, split=split)
    return metrics, errors


def nearest_photo_metrics(
    city: CityDir,
    encoders: ViewEncoders,
    train: Samples,
    queries: Samples,
    *,
    split: str = "test",
    cache_views: CacheViews = CacheViews(),
    workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    """``metrics.json``-style accuracy of the reference on ``queries`` matched against ``train``, and its top-1 errors.

    ``cache_views`` names the street cache to read the plain crops from: a model trained with
    ``freeze: all`` and these settings has computed it already.
    """
    frozen = frozen_copy(encoders)
    cv = cache_views
    cache = street_cache(frozen, city, cv.augment, views=cv.views, seed=cv.seed, workers=workers, progress=progress)
    try:
        database = _unit(cache.plain(cache.rows_of(train.image_ids)))
        found = [
            (_unit(cache.plain(rows)) @ database.T).topk(min(TOP, len(database)), dim=1).indices.numpy()
            for rows in np.array_split(cache.rows_of(queries.image_ids), max(1, len(queries) // CHUNK))
        ]
    finally:
        cache.close()
    best = np.concatenate(found)
    errors = geodesic_m(train.lon[best], train.lat[best], queries.lon[:, None], queries.lat[:, None])
    return {"model": "nearest photo", "split": split, **summarize_errors(errors[:, 0], errors, queries.captures)}, errors[:, 0]


def frozen_copy(encoders: ViewEncoders) -> ViewEncoders:
    """``encoders`` with their weights, frozen whole. Built from the config without its weights file and
    loaded from the module: a checkpoint's config names none (its weights are in the checkpoint)."""
    copy = build_encoder(dataclasses.replace(encoders.cfg, weights="none", freeze="all", sat_freeze="all"))
    copy.load_state_dict(encoders.state_dict())
    return copy.eval()


def random_cell_metrics(samples: Samples, grid: ZoomGrid, seed: int, split: str = "test") -> tuple[dict[str, Any], np.ndarray]:
    """The floor: each query guesses terminal cells uniformly at random (5 of them for Recall@5)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, grid.n_cells(grid.levels), size=(len(samples), 5))
    lon, lat = grid.centre_lonlat_of_path(grid.path_of_cell(grid.levels, cells.ravel()))
    errors = geodesic_m(lon, lat, np.repeat(samples.lon, 5), np.repeat(samples.lat, 5)).reshape(-1, 5)
    return {"model": "random", "split": split, **summarize_errors(errors[:, 0], errors, samples.captures)}, errors[:, 0]


def _unit(features: torch.Tensor) -> torch.Tensor:
    """``[N, n, D]`` pooled embeddings of n crops → their mean, unit length ``[N, D]``."""
    return F.normalize(features.mean(1), dim=-1)
