"""A fresh learned aggregator's starting point: NetVLAD's centres from the k-means of training features.

NetVLAD (:class:`~zoomloc.models.pooling.NetVLAD`) learns from random centres too, but the paper's
recipe, centres at the k-means of local features of the training images, starts it where each
centre already stands for a kind of local feature; on the bench city's frozen ``blocks.5`` maps that
start finds a new capture's nearest training photo more often after the same steps (NOTES.md). A
few hundred photos and map views, through the frozen trunk once, give thousands of local features
per view: seconds, before the first step of a run (a resumed run has them in its checkpoint).
"""

from __future__ import annotations

import numpy as np
import torch

from zoomloc.data.photos import street_input
from zoomloc.data.samples import Samples
from zoomloc.geo.pyramid import PyramidReader
from zoomloc.models.encoders import ViewEncoders
from zoomloc.models.pooling import NetVLAD
from zoomloc.models.trunk import evaluating

FIT_IMAGES = 256  # photos, and map views, whose local features the centres are fitted to


@torch.no_grad()
def fit_aggregators(encoders: ViewEncoders, samples: Samples, pyramid: PyramidReader, seed: int) -> list[str]:
    """Fit every unfitted NetVLAD of ``encoders`` to the maps its backbone gives for a seeded draw of
    the training photos (plain crops) or the pyramid's views; the views fitted ("street", "sat")."""
    fitted = []
    for view in ("street", "sat"):
        pool = encoders.backbone(view).global_pool
        if not isinstance(pool, NetVLAD) or bool(pool.fitted):
            continue
        rng = np.random.default_rng(seed)
        maps = _street_maps(encoders, samples, rng) if view == "street" else _sat_maps(encoders, pyramid, rng)
        pool.fit(maps, seed)
        fitted.append(view)
    return fitted


def _street_maps(encoders: ViewEncoders, samples: Samples, rng: np.random.Generator) -> torch.Tensor:
    """The last feature maps ``[N·n, C, h, w]`` of drawn training photos' plain crops."""
    rows = rng.choice(len(samples), min(FIT_IMAGES, len(samples)), replace=False)
    tf = encoders.transforms()
    images = torch.stack([street_input(samples.image_paths[i], tf) for i in sorted(rows)])
    return _features(encoders, "street", images.flatten(0, 1))


def _sat_maps(encoders: ViewEncoders, pyramid: PyramidReader, rng: np.random.Generator) -> torch.Tensor:
    """The last feature maps ``[N, C, h, w]`` of views drawn from every level, as many of each as it has."""
    counts = [pyramid.grid.n_cells(level) for level in range(pyramid.grid.levels)]
    drawn = np.sort(rng.choice(sum(counts), min(FIT_IMAGES, sum(counts)), replace=False))
    starts = np.cumsum([0, *counts])
    tf = encoders.transforms()
    views = [
        pyramid.views(level, drawn[(drawn >= starts[level]) & (drawn < starts[level + 1])] - starts[level]) for level in range(len(counts))
    ]
    images = torch.stack([tf.sat(torch.from_numpy(v).permute(2, 0, 1)) for v in np.concatenate(views)])
    return _features(encoders, "sat", images)


def _features(encoders: ViewEncoders, view: str, images: torch.Tensor) -> torch.Tensor:
    """``view``'s backbone up to its pooling, in eval mode, on its device, a batch of 64 at a time."""
    device = next(encoders.parameters()).device
    with evaluating(encoders.backbone(view)) as backbone:
        return torch.cat([backbone.forward_features(images[i : i + 64].to(device)) for i in range(0, len(images), 64)])
