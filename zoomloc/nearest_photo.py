"""The nearest-photo reference: each query takes the position of the most similar training photo.

In the same-area protocols (``photo``, ``sequence``) it is the rival a practitioner tries first —
why not match a new photo against the city's geotagged ones? It needs no map and no training,
and it cannot answer where no training photo was taken: a model that reads the map should beat
it there. Its features are the frozen street encoder's pooled embeddings (the models' ImageNet
weights and input size, read from the street cache), compared by cosine similarity, exact search;
the answer is the recorded GPS position of the best match.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from zoomloc.citydir import CityDir
from zoomloc.data import AugmentConfig, Samples
from zoomloc.encoders import EncoderConfig, build_encoder
from zoomloc.grid import geodesic_m
from zoomloc.metrics import summarize_errors
from zoomloc.street_cache import street_cache

TOP = 5  # matches kept per query (Recall@5)
CHUNK = 1024  # queries compared at once


def nearest_photo_metrics(
    city: CityDir,
    encoder: EncoderConfig,
    train: Samples,
    queries: Samples,
    *,
    split: str = "test",
    cache_views: tuple[AugmentConfig, int, int] = (AugmentConfig(), 0, 0),
    workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    """``metrics.json``-style accuracy of the reference on ``queries`` matched against ``train``, and its top-1 errors.

    ``cache_views`` (augmentation, views, seed) names the street cache to read the plain crops
    from: a model trained with ``freeze: all`` and these settings has computed it already.
    """
    frozen = build_encoder(dataclasses.replace(encoder, freeze="all", sat_freeze="all")).eval()
    augment, views, seed = cache_views
    cache = street_cache(frozen, city, augment, views=views, seed=seed, workers=workers, progress=progress)
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
    return {"model": "nearest photo", "split": split, **summarize_errors(errors[:, 0], errors)}, errors[:, 0]


def _unit(features: torch.Tensor) -> torch.Tensor:
    """``[N, n, D]`` pooled embeddings of n crops → their mean, unit length ``[N, D]``."""
    return F.normalize(features.mean(1), dim=-1)
