"""What a model's figures are read against: the random cell (the floor) and the nearest photo (the rival).

- **random cell**: each query guesses terminal cells uniformly at random. A model at this level
  has learned nothing usable.
- **nearest photo**: each query takes the position of its most similar training photo. In the
  same-area protocols (``photo``, ``sequence``) it is the rival a practitioner tries first — why
  not match a new photo against the city's geotagged ones? It needs no map and no training, and
  it cannot answer where no training photo was taken: a model that reads the map should beat it
  there. Its features are the model's street encoder as it was before training (its initial
  weights, e.g. ImageNet's; its input size), pooled, compared by cosine similarity, exact
  search; the answer is the recorded GPS position of the best match.
- **nearest photo, trained encoder** (``nearest_photo_trained``): the same search on the place
  embeddings the model learned (:meth:`~zoomloc.models.base.LocalizationModel.place_embedding`: a
  retrieval model's street embedding after its projection head, a zoom's cell head's). It shows the
  place recognition a model's training bought on its own, apart from the map: an encoder that
  matches places across captures finds the training photos of the same place. Left out where it
  finds what the initial encoder finds (a street embedding that never trained).

Both read the street cache the model trained with (its checkpoint names it), so no photo is
encoded again: the frozen trunk's cached output goes through the initial tail and through the
trained one.

``zoomloc evaluate`` reports both beside the model (``metrics.json``'s ``references``); the
benchmark tables them for every protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zoomloc.data.samples import Samples
from zoomloc.data.street_cache import CacheViews, street_cache
from zoomloc.evaluation.metrics import summarize_errors
from zoomloc.geo.citydir import CityDir
from zoomloc.geo.grid import ZoomGrid, geodesic_m
from zoomloc.models.base import LocalizationModel
from zoomloc.models.encoders import ViewEncoders, build_encoder

TOP = 5  # matches kept per query (Recall@5)
REFERENCE_LABELS = {
    "nearest_photo": "nearest photo (initial encoder)",
    "nearest_photo_trained": "nearest photo (trained encoder)",
    "random": "random cell",
}
CHUNK = 1024  # queries compared at once


def references(
    city: CityDir,
    grid: ZoomGrid,
    model: LocalizationModel,
    queries: Samples,
    *,
    split: str,
    cache_views: CacheViews = CacheViews(),
    initial_weights: str | None = None,
    seed: int = 0,
    workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """The references on ``queries`` (photos of ``split``): ``{"nearest_photo": metrics, "nearest_photo_trained":
    metrics, "random": metrics}`` and their top-1 errors. The nearest photos are left out for the training
    split, whose photos would find themselves, and where the city's split has no training photo to match.

    ``initial_weights`` is the street encoder's weights source before training (a checkpoint's
    ``encoder_weights``); unknown (older checkpoints), the frozen features are the model's own.
    """
    metrics, errors = {}, {}
    if split != "train" and (city.read_split()["split"] == "train").any():
        train = Samples.from_city(city, "train", grid)
        initial_weights = None if initial_weights == "hub" else initial_weights  # never a download at evaluation
        initial = initial_copy(model.encoders, initial_weights)
        searches = {"nearest_photo": (initial, lambda x: initial.encode_street(x, trunk=True))}
        if model.encoder_cfg.freeze != "none":  # a street encoder trained whole has no trunk to read from the cache
            searches["nearest_photo_trained"] = (model.encoders, lambda x: model.place_embedding(model.encode_street(x, trunk=True)))
        for name, (encoders, embed) in searches.items():
            metrics[name], errors[name] = nearest_photo_metrics(
                city, encoders, train, queries, embed=embed, split=split, cache_views=cache_views, workers=workers, progress=progress
            )
        metrics["nearest_photo"]["features"] = "initial" if initial_weights is not None else "model"
        if "nearest_photo_trained" in errors and np.array_equal(errors["nearest_photo_trained"], errors["nearest_photo"]):
            del metrics["nearest_photo_trained"], errors["nearest_photo_trained"]  # a street embedding that never trained
    metrics["random"], errors["random"] = random_cell_metrics(queries, grid, seed, split=split)
    return metrics, errors


def nearest_photo_metrics(
    city: CityDir,
    encoders: ViewEncoders,
    train: Samples,
    queries: Samples,
    *,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
    split: str = "test",
    cache_views: CacheViews = CacheViews(),
    workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    """``metrics.json``-style accuracy of the reference on ``queries`` matched against ``train``, and its top-1 errors.

    The photos' features are ``embed`` (default: ``encoders``' pooled street embedding) of their
    plain crops' entries in the street cache of ``encoders``' trunk that ``cache_views`` names: the
    one a model trained with these settings has computed already.
    """
    embed = embed or (lambda x: encoders.encode_street(x, trunk=True))
    cv = cache_views
    cache = street_cache(encoders, city, cv.augment, views=cv.views, seed=cv.seed, workers=workers, progress=progress)

    @torch.no_grad()
    def features(rows: np.ndarray) -> torch.Tensor:
        return torch.cat(
            [F.normalize(embed(cache.plain(part)).float(), dim=-1) for part in np.array_split(rows, max(1, len(rows) // CHUNK))]
        )

    was_training = encoders.training
    encoders.eval()
    try:
        database = features(cache.rows_of(train.image_ids))
        found = [
            (features(rows) @ database.T).topk(min(TOP, len(database)), dim=1).indices.numpy()
            for rows in np.array_split(cache.rows_of(queries.image_ids), max(1, len(queries) // CHUNK))
        ]
    finally:
        cache.close()
        encoders.train(was_training)
    best = np.concatenate(found)
    errors = geodesic_m(train.lon[best], train.lat[best], queries.lon[:, None], queries.lat[:, None])
    return {"model": "nearest photo", "split": split, **summarize_errors(errors[:, 0], errors, queries.captures)}, errors[:, 0]


def initial_copy(encoders: ViewEncoders, weights: str | None = None) -> ViewEncoders:
    """``encoders`` as they were before training, frozen whole but for the same cut (so that they read the
    model's street cache): with the initial ``weights`` (an :class:`EncoderConfig` source) where given, else
    with the model's own. Without ``weights`` the copy is built from the config without its weights file
    and loaded from the module: a checkpoint's config names none (its weights are in the checkpoint)."""
    cfg = encoders.cfg
    freeze = "all" if cfg.freeze == "none" else cfg.freeze
    copy = build_encoder(dataclasses.replace(cfg, weights=weights or "none", freeze=freeze, sat_freeze="all"))
    if weights is None:
        copy.load_state_dict(encoders.state_dict())
    return copy.eval()


def random_cell_metrics(samples: Samples, grid: ZoomGrid, seed: int, split: str = "test") -> tuple[dict[str, Any], np.ndarray]:
    """The floor: each query guesses terminal cells uniformly at random (5 of them for Recall@5)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, grid.n_cells(grid.levels), size=(len(samples), 5))
    lon, lat = grid.centre_lonlat_of_path(grid.path_of_cell(grid.levels, cells.ravel()))
    errors = geodesic_m(lon, lat, np.repeat(samples.lon, 5), np.repeat(samples.lat, 5)).reshape(-1, 5)
    return {"model": "random", "split": split, **summarize_errors(errors[:, 0], errors, samples.captures)}, errors[:, 0]
